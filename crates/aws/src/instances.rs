//! EC2 instance tags: how the spot-warning handler maps an instance to its training run.
//!
//! Owns the [`InstanceTags`] trait and, behind the `ec2` cargo feature, its SDK implementation
//! `Ec2InstanceTags` (DescribeTags filtered on the instance id). The feature exists because
//! aws-sdk-ec2 is by far the largest SDK crate: only the ec2-spot-events function enables it, so
//! the SageMaker function, the tests and the CLI never compile it.

use std::future::Future;

use spotcheck_control::Tags;

use crate::error::AwsError;

/// Reads an instance's tags.
pub trait InstanceTags {
    /// All tags of `instance_id`; `Ok(None)` when the instance does not exist (any more).
    fn instance_tags(
        &self,
        instance_id: &str,
    ) -> impl Future<Output = Result<Option<Tags>, AwsError>> + Send;
}

/// [`InstanceTags`] over aws-sdk-ec2 (feature `ec2`).
#[cfg(feature = "ec2")]
#[derive(Clone, Debug)]
pub struct Ec2InstanceTags {
    client: aws_sdk_ec2::Client,
}

#[cfg(feature = "ec2")]
impl Ec2InstanceTags {
    /// From a shared SDK configuration (`AWS_ENDPOINT_URL[_EC2]` for emulators).
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Ec2InstanceTags {
            client: aws_sdk_ec2::Client::new(config),
        }
    }
}

#[cfg(feature = "ec2")]
impl InstanceTags for Ec2InstanceTags {
    async fn instance_tags(&self, instance_id: &str) -> Result<Option<Tags>, AwsError> {
        use aws_sdk_ec2::types::Filter;
        let mut tags = Tags::new();
        let mut found = false;
        let mut pages = self
            .client
            .describe_tags()
            .filters(
                Filter::builder()
                    .name("resource-id")
                    .values(instance_id)
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk("DescribeTags", e))?;
            for tag in page.tags() {
                if let Some(key) = tag.key() {
                    found = true;
                    tags.insert(key, tag.value().unwrap_or_default());
                }
            }
        }
        // DescribeTags cannot tell "no such instance" from "no tags"; both mean "not managed".
        Ok(found.then_some(tags))
    }
}
