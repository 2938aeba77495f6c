//! The embedded S3 (s3s + s3s-fs) on the behaviours spotcheck relies on, through the real
//! `aws-sdk-s3` client: CRC-64/NVME stored and returned by HeadObject (what the checkpoint
//! validator reads instead of downloading), a wrong checksum refused (the object it leaves
//! behind, unlike S3, carries no checksum to trust), and `If-None-Match: *` answering 412
//! (the ledger's write-once rule).

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode};
use spotcheck_local::s3::{ensure_bucket, s3_client, EmbeddedS3};
use spotcheck_protocol::FileDigest;

#[tokio::test]
async fn checksums_and_conditional_writes_behave_as_in_s3() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = EmbeddedS3::start(dir.path(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let client = s3_client(&s3.endpoint(), "us-east-1");
    ensure_bucket(&client, "bkt").await.unwrap();
    ensure_bucket(&client, "bkt").await.unwrap();

    let body = b"checkpoint bytes".to_vec();
    let expected = FileDigest::of(&body).crc64nvme_base64();
    client
        .put_object()
        .bucket("bkt")
        .key("ck/model.safetensors")
        .body(ByteStream::from(body.clone()))
        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
        .send()
        .await
        .unwrap();
    let head = client
        .head_object()
        .bucket("bkt")
        .key("ck/model.safetensors")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.checksum_crc64_nvme(), Some(expected.as_str()));
    assert_eq!(head.content_length(), Some(body.len() as i64));

    let wrong = client
        .put_object()
        .bucket("bkt")
        .key("ck/bad")
        .body(ByteStream::from(body.clone()))
        .checksum_crc64_nvme("AAAAAAAAAAA=")
        .send()
        .await;
    assert!(wrong.is_err(), "a mismatching checksum must be refused");
    // Unlike S3, s3s-fs keeps the refused bytes, but without a checksum: the validator then
    // stream-hashes the object against the manifest instead of trusting it.
    let left = client
        .head_object()
        .bucket("bkt")
        .key("ck/bad")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await;
    if let Ok(left) = left {
        assert_eq!(left.checksum_crc64_nvme(), None);
    }

    let first = client
        .put_object()
        .bucket("bkt")
        .key("ledger/x.json")
        .body(ByteStream::from_static(b"{}"))
        .if_none_match("*")
        .send()
        .await;
    assert!(first.is_ok(), "{first:?}");
    let second = client
        .put_object()
        .bucket("bkt")
        .key("ledger/x.json")
        .body(ByteStream::from_static(b"{\"other\": 1}"))
        .if_none_match("*")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        second.raw_response().map(|r| r.status().as_u16()),
        Some(412)
    );
    assert_eq!(second.code(), Some("PreconditionFailed"));
    let kept = client
        .get_object()
        .bucket("bkt")
        .key("ledger/x.json")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(&kept[..], b"{}");
}
