//! Checkpoints in S3 when SageMaker's checkpoint sync is not there (training on your own EC2
//! spot instances): upload each finished checkpoint, and download the newest valid one on start.
//!
//! Layout and validity are the protocol's: `<prefix>/<namespace>/step-…/<file>`, data files
//! first and `manifest.json` last, so a reader never sees a manifest before its files. Every
//! upload carries the file's CRC-64/NVME from the manifest, which S3 checks on arrival and
//! stores as the object's full-object checksum; files over the part size go up as multipart
//! uploads with a full-object CRC-64/NVME. On start, remote checkpoints are judged from the
//! manifest and HeadObject checksums alone (no download) and only the newest valid one is
//! fetched. After each upload the same retention rules as for the local root prune S3 (this
//! host's namespace only). S3 errors are reported, never fatal to training: the local
//! checkpoint stays.

use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart,
};
use aws_sdk_s3::Client;
use spotcheck_protocol::{
    is_transport_name, judge_at, parse_step_dir_name, plan_retention, step_dir_name,
    CheckpointReport, Location, Manifest, ObservedFile, RetentionAction, ValidCheckpoint, Verdict,
    MANIFEST_FILE, MAX_MANIFEST_BYTES, TEMP_SUFFIX,
};

/// Files above this size are uploaded in parts of this size.
pub const DEFAULT_PART_SIZE: u64 = 64 << 20;

/// An `s3://bucket/prefix` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Uri {
    /// Bucket.
    pub bucket: String,
    /// Key prefix without leading or trailing slashes (may be empty).
    pub prefix: String,
}

impl S3Uri {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{uri}: expected s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid_bucket {
            return Err(format!("{uri}: `{bucket}` is not a valid bucket name"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == ".." || p == ".") {
            return Err(format!(
                "{uri}: prefix may not contain `.` or `..` segments"
            ));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// The key of `rel` under the prefix.
    pub fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }
}

/// A connected S3 checkpoint location (owns a small runtime: the trainer is not async).
pub struct S3Sync {
    rt: tokio::runtime::Runtime,
    client: Client,
    uri: S3Uri,
    part_size: u64,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn sdk_err<E: std::error::Error + Send + Sync + 'static>(
    what: &str,
    e: aws_sdk_s3::error::SdkError<E>,
) -> String {
    format!("{what}: {}", aws_sdk_s3::error::DisplayErrorContext(e))
}

impl S3Sync {
    /// Connects with the default AWS configuration chain. `AWS_ENDPOINT_URL(_S3)` points it at
    /// another endpoint (an emulator), which then gets path-style addressing.
    pub fn connect(uri: &str) -> Result<Self, String> {
        let uri = S3Uri::parse(uri)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(err)?;
        let config = rt.block_on(aws_config::load_defaults(
            aws_config::BehaviorVersion::latest(),
        ));
        let custom_endpoint = std::env::var_os("AWS_ENDPOINT_URL_S3")
            .or_else(|| std::env::var_os("AWS_ENDPOINT_URL"))
            .is_some();
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(custom_endpoint)
            .build();
        let part_size = std::env::var("SPOTCHECK_S3_PART_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_PART_SIZE)
            .max(5 << 20);
        Ok(Self {
            rt,
            client: Client::from_conf(s3_config),
            uri,
            part_size,
        })
    }

    /// Uploads a committed checkpoint: every file, then the manifest.
    pub fn upload(&self, root: &Path, ckpt: &ValidCheckpoint) -> Result<u64, String> {
        let rel_dir = ckpt
            .dir
            .strip_prefix(root)
            .map_err(err)?
            .to_string_lossy()
            .into_owned();
        let mut bytes = 0;
        for f in &ckpt.manifest.files {
            let key = self.uri.key(&format!("{rel_dir}/{}", f.path));
            self.put_file(&ckpt.dir.join(&f.path), &key, f.size, Some(&f.crc64nvme))?;
            bytes += f.size;
        }
        let manifest = ckpt.dir.join(MANIFEST_FILE);
        let size = std::fs::metadata(&manifest).map_err(err)?.len();
        self.put_file(
            &manifest,
            &self.uri.key(&format!("{rel_dir}/{MANIFEST_FILE}")),
            size,
            None,
        )?;
        Ok(bytes + size)
    }

    fn put_file(&self, path: &Path, key: &str, size: u64, crc: Option<&str>) -> Result<(), String> {
        if size > self.part_size {
            return self.put_multipart(path, key, crc);
        }
        let body = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.uri.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .body(ByteStream::from(body));
        if let Some(crc) = crc {
            // S3 recomputes it on arrival and refuses the object if the bytes differ.
            req = req.checksum_crc64_nvme(crc);
        }
        self.rt
            .block_on(req.send())
            .map_err(|e| sdk_err(&format!("PutObject {key}"), e))?;
        Ok(())
    }

    fn put_multipart(&self, path: &Path, key: &str, crc: Option<&str>) -> Result<(), String> {
        use std::io::Read;
        let c = &self.client;
        let created = self
            .rt
            .block_on(
                c.create_multipart_upload()
                    .bucket(&self.uri.bucket)
                    .key(key)
                    .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                    .checksum_type(ChecksumType::FullObject)
                    .send(),
            )
            .map_err(|e| sdk_err(&format!("CreateMultipartUpload {key}"), e))?;
        let upload_id = created
            .upload_id()
            .ok_or("CreateMultipartUpload returned no upload id")?
            .to_string();
        let result = (|| -> Result<(), String> {
            let mut file = std::fs::File::open(path).map_err(err)?;
            let mut parts = Vec::new();
            let mut number = 1;
            loop {
                let mut buf = Vec::with_capacity(self.part_size as usize);
                (&mut file)
                    .take(self.part_size)
                    .read_to_end(&mut buf)
                    .map_err(err)?;
                if buf.is_empty() {
                    break;
                }
                let out = self
                    .rt
                    .block_on(
                        c.upload_part()
                            .bucket(&self.uri.bucket)
                            .key(key)
                            .upload_id(&upload_id)
                            .part_number(number)
                            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
                            .body(ByteStream::from(buf))
                            .send(),
                    )
                    .map_err(|e| sdk_err(&format!("UploadPart {key} #{number}"), e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .set_checksum_crc64_nvme(out.checksum_crc64_nvme().map(str::to_string))
                        .build(),
                );
                number += 1;
            }
            let mut complete = c
                .complete_multipart_upload()
                .bucket(&self.uri.bucket)
                .key(key)
                .upload_id(&upload_id)
                .checksum_type(ChecksumType::FullObject)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                );
            if let Some(crc) = crc {
                complete = complete.checksum_crc64_nvme(crc);
            }
            self.rt
                .block_on(complete.send())
                .map_err(|e| sdk_err(&format!("CompleteMultipartUpload {key}"), e))?;
            Ok(())
        })();
        if result.is_err() {
            let abort = c
                .abort_multipart_upload()
                .bucket(&self.uri.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send();
            let _ = self.rt.block_on(abort);
        }
        result
    }

    /// Every key under `prefix` (a full key prefix).
    fn list_keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.uri.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = self.rt.block_on(pages.next()) {
            let page = page.map_err(|e| sdk_err("ListObjectsV2", e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(str::to_string),
            );
        }
        Ok(keys)
    }

    /// Step directories of `namespace` in S3, newest first.
    fn remote_steps(&self, namespace: &str) -> Result<Vec<u64>, String> {
        let prefix = self.uri.key(&format!("{namespace}/"));
        let steps: std::collections::BTreeSet<u64> = self
            .list_keys(&prefix)?
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix)?.split('/').next())
            .filter_map(parse_step_dir_name)
            .collect();
        Ok(steps.into_iter().rev().collect())
    }

    /// Judges one remote checkpoint from its manifest and HeadObject checksums (no download).
    fn judge_remote(
        &self,
        namespace: &str,
        step: u64,
    ) -> Result<(Verdict, Option<Manifest>), String> {
        let dir = self
            .uri
            .key(&format!("{namespace}/{}", step_dir_name(step)));
        let location = Location {
            namespace: Some(namespace.to_string()),
            step,
        };
        let got = self.rt.block_on(
            self.client
                .get_object()
                .bucket(&self.uri.bucket)
                .key(format!("{dir}/{MANIFEST_FILE}"))
                .range(format!("bytes=0-{}", MAX_MANIFEST_BYTES))
                .send(),
        );
        let manifest_bytes = match got {
            Ok(o) => Some(
                self.rt
                    .block_on(o.body.collect())
                    .map_err(err)?
                    .into_bytes()
                    .to_vec(),
            ),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
            Err(e) => return Err(sdk_err("GetObject manifest", e)),
        };
        let manifest = manifest_bytes
            .as_deref()
            .and_then(|b| Manifest::parse(b).ok());
        let mut observed = Vec::new();
        for f in manifest.iter().flat_map(|m| &m.files) {
            let head = self.rt.block_on(
                self.client
                    .head_object()
                    .bucket(&self.uri.bucket)
                    .key(format!("{dir}/{}", f.path))
                    .checksum_mode(ChecksumMode::Enabled)
                    .send(),
            );
            match head {
                Ok(h) => observed.push(ObservedFile {
                    path: f.path.clone(),
                    size: h.content_length().unwrap_or(-1).max(0) as u64,
                    crc64nvme: h.checksum_crc64_nvme().map(str::to_string),
                    sha256: None,
                }),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {}
                Err(e) => return Err(sdk_err("HeadObject", e)),
            }
        }
        Ok((
            judge_at(&location, manifest_bytes.as_deref(), &observed),
            manifest,
        ))
    }

    /// Downloads the newest remote checkpoint of `namespace` that is valid in S3 and newer than
    /// anything local; returns its name, or `None` when there is nothing newer.
    pub fn download_latest(
        &self,
        root: &Path,
        namespace: &str,
        local_newest: Option<u64>,
    ) -> Result<Option<String>, String> {
        for step in self.remote_steps(namespace)? {
            if local_newest.is_some_and(|l| l >= step) {
                return Ok(None);
            }
            let name = format!("{namespace}/{}", step_dir_name(step));
            match self.judge_remote(namespace, step)? {
                (Verdict::Valid, Some(manifest)) => {
                    self.fetch(root, &name, &manifest)?;
                    return Ok(Some(name));
                }
                (verdict, _) => {
                    tracing::warn!(event = "s3_checkpoint_skipped", checkpoint = %name, verdict = ?verdict, "remote checkpoint not valid; trying an older one");
                }
            }
        }
        Ok(None)
    }

    /// Applies the retention rules (the protocol's `plan_retention`, as for the local root) to
    /// this host's checkpoints in S3; call it after an upload succeeded. Each remote checkpoint
    /// is judged from its manifest and HeadObject checksums (no download), so the newest valid
    /// one in S3 is never deleted, nor anything newer than it (an upload may be in flight).
    /// Returns how many checkpoints were deleted.
    pub fn prune(&self, namespace: &str, keep: usize) -> Result<usize, String> {
        let mut reports = Vec::new();
        for step in self.remote_steps(namespace)? {
            let (verdict, _) = self.judge_remote(namespace, step)?;
            let location = Location {
                namespace: Some(namespace.to_string()),
                step,
            };
            reports.push(CheckpointReport::new(&location, verdict));
        }
        let actions = plan_retention(&reports, keep, &[]);
        for RetentionAction::Delete { name } in &actions {
            self.delete_remote(name)?;
        }
        Ok(actions.len())
    }

    /// Deletes every object of the checkpoint `name`, its manifest first, so that an
    /// interrupted deletion leaves an incomplete checkpoint, never a valid-looking one with
    /// files missing.
    fn delete_remote(&self, name: &str) -> Result<(), String> {
        let prefix = self.uri.key(&format!("{name}/"));
        let manifest = format!("{prefix}{MANIFEST_FILE}");
        let mut keys = vec![manifest.clone()];
        keys.extend(
            self.list_keys(&prefix)?
                .into_iter()
                .filter(|k| *k != manifest),
        );
        for key in keys {
            // Deleting a missing key succeeds in S3, so a repeated prune is harmless.
            self.rt
                .block_on(
                    self.client
                        .delete_object()
                        .bucket(&self.uri.bucket)
                        .key(&key)
                        .send(),
                )
                .map_err(|e| sdk_err(&format!("DeleteObject {key}"), e))?;
        }
        Ok(())
    }

    fn fetch(&self, root: &Path, name: &str, manifest: &Manifest) -> Result<(), String> {
        let dir: PathBuf = root.join(name);
        std::fs::create_dir_all(&dir).map_err(err)?;
        let paths = manifest
            .files
            .iter()
            .map(|f| f.path.as_str())
            .chain([MANIFEST_FILE]);
        for rel in paths {
            if is_transport_name(rel) {
                continue;
            }
            let key = self.uri.key(&format!("{name}/{rel}"));
            let obj = self
                .rt
                .block_on(
                    self.client
                        .get_object()
                        .bucket(&self.uri.bucket)
                        .key(&key)
                        .send(),
                )
                .map_err(|e| sdk_err(&format!("GetObject {key}"), e))?;
            let bytes = self
                .rt
                .block_on(obj.body.collect())
                .map_err(err)?
                .into_bytes();
            let target = dir.join(rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(err)?;
            }
            // Temporary name first: a half-downloaded checkpoint must never look complete.
            let tmp = PathBuf::from(format!("{}{TEMP_SUFFIX}", target.display()));
            std::fs::write(&tmp, &bytes).map_err(err)?;
            std::fs::rename(&tmp, &target).map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris_parse_and_refuse_nonsense() {
        let u = S3Uri::parse("s3://my-bucket/runs/a/").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("my-bucket", "runs/a")
        );
        assert_eq!(
            u.key("algo-1/step-000000000001/manifest.json"),
            "runs/a/algo-1/step-000000000001/manifest.json"
        );
        assert_eq!(S3Uri::parse("s3://bkt").unwrap().key("x"), "x");
        for bad in ["https://b/p", "s3://", "s3://B/p", "s3://b/../p", "s3://ab"] {
            assert!(S3Uri::parse(bad).is_err(), "{bad}");
        }
    }
}
