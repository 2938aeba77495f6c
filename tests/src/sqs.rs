//! SQS queues as EventBridge taps, on LocalStack.
//!
//! Owns a small client of SQS's JSON protocol (CreateQueue, GetQueueAttributes,
//! ReceiveMessage, DeleteMessage, DeleteQueue: the workspace has no SQS SDK crate, and these
//! five calls do not justify one) and [`Tap`]: an EventBridge rule on a bus whose target is a
//! fresh queue, so a test sees exactly what EventBridge delivered for that pattern. Waiting is
//! always bounded by a deadline and done by long-polling, never by fixed sleeps.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::aws_json;

const SQS_JSON: &str = "application/x-amz-json-1.0";

/// An SQS endpoint.
#[derive(Clone, Debug)]
pub struct Sqs {
    endpoint: String,
}

/// A queue.
#[derive(Clone, Debug)]
pub struct Queue {
    /// `QueueUrl`.
    pub url: String,
    /// `QueueArn`.
    pub arn: String,
}

/// A received message.
#[derive(Clone, Debug)]
pub struct Message {
    /// The body (for an EventBridge target: the event, as JSON text).
    pub body: String,
    /// For DeleteMessage.
    pub receipt: String,
}

impl Sqs {
    /// SQS at `endpoint`.
    pub fn new(endpoint: &str) -> Sqs {
        Sqs {
            endpoint: endpoint.to_owned(),
        }
    }

    async fn call(&self, op: &str, body: Value) -> Value {
        aws_json(&self.endpoint, SQS_JSON, &format!("AmazonSQS.{op}"), &body)
            .await
            .unwrap_or_else(|e| panic!("SQS {op}: {e}"))
    }

    /// Creates a queue named `name`.
    pub async fn create_queue(&self, name: &str) -> Queue {
        let created = self.call("CreateQueue", json!({"QueueName": name})).await;
        let url = created["QueueUrl"]
            .as_str()
            .expect("CreateQueue returns a QueueUrl")
            .to_owned();
        let attrs = self
            .call(
                "GetQueueAttributes",
                json!({"QueueUrl": url, "AttributeNames": ["QueueArn"]}),
            )
            .await;
        let arn = attrs["Attributes"]["QueueArn"]
            .as_str()
            .expect("GetQueueAttributes returns the QueueArn")
            .to_owned();
        Queue { url, arn }
    }

    /// One ReceiveMessage (long poll up to `wait_seconds`), deleting what it got.
    pub async fn receive(&self, queue: &Queue, wait_seconds: u32) -> Vec<Message> {
        let got = self
            .call(
                "ReceiveMessage",
                json!({"QueueUrl": queue.url, "MaxNumberOfMessages": 10,
                       "WaitTimeSeconds": wait_seconds, "VisibilityTimeout": 30}),
            )
            .await;
        let messages: Vec<Message> = got["Messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| Message {
                        body: m["Body"].as_str().unwrap_or_default().to_owned(),
                        receipt: m["ReceiptHandle"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        for m in &messages {
            self.call(
                "DeleteMessage",
                json!({"QueueUrl": queue.url, "ReceiptHandle": m.receipt}),
            )
            .await;
        }
        messages
    }

    /// Receives until `done` holds for everything received so far or `timeout` passes;
    /// returns the messages' bodies parsed as JSON (non-JSON bodies as strings).
    pub async fn collect_until(
        &self,
        queue: &Queue,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut all = Vec::new();
        while !done(&all) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let wait = left.as_secs().clamp(1, 2) as u32;
            for m in self.receive(queue, wait).await {
                all.push(serde_json::from_str(&m.body).unwrap_or(Value::String(m.body)));
            }
        }
        all
    }

    /// Deletes a queue (best effort).
    pub async fn delete_queue(&self, queue: &Queue) {
        let _ = aws_json(
            &self.endpoint,
            SQS_JSON,
            "AmazonSQS.DeleteQueue",
            &json!({"QueueUrl": queue.url}),
        )
        .await;
    }
}

/// An EventBridge rule delivering to a queue of its own.
#[derive(Clone, Debug)]
pub struct Tap {
    /// The rule's name.
    pub rule: String,
    /// The bus it is on.
    pub bus: String,
    /// Its queue.
    pub queue: Queue,
}

impl Tap {
    /// Creates a queue and a rule with `pattern` on `bus` targeting it.
    pub async fn create(
        eb: &aws_sdk_eventbridge::Client,
        sqs: &Sqs,
        bus: &str,
        name: &str,
        pattern: &Value,
    ) -> Tap {
        let queue = sqs.create_queue(name).await;
        eb.put_rule()
            .name(name)
            .event_bus_name(bus)
            .event_pattern(pattern.to_string())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PutRule {name} on {bus}: {}",
                    aws_sdk_eventbridge::error::DisplayErrorContext(&e)
                )
            });
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id("tap")
            .arn(&queue.arn)
            .build()
            .expect("a target with id and arn");
        let put = eb
            .put_targets()
            .rule(name)
            .event_bus_name(bus)
            .targets(target)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PutTargets {name}: {}",
                    aws_sdk_eventbridge::error::DisplayErrorContext(&e)
                )
            });
        assert_eq!(put.failed_entry_count(), 0, "PutTargets {name}: {put:?}");
        Tap {
            rule: name.to_owned(),
            bus: bus.to_owned(),
            queue,
        }
    }

    /// Removes the rule and the queue (best effort).
    pub async fn remove(&self, eb: &aws_sdk_eventbridge::Client, sqs: &Sqs) {
        let _ = eb
            .remove_targets()
            .rule(&self.rule)
            .event_bus_name(&self.bus)
            .ids("tap")
            .send()
            .await;
        let _ = eb
            .delete_rule()
            .name(&self.rule)
            .event_bus_name(&self.bus)
            .send()
            .await;
        sqs.delete_queue(&self.queue).await;
    }
}
