//! Streaming uploads to S3 on the emulator: one PUT when the output fits in
//! a part, a multipart upload otherwise; the object is what was read.

use bulk_import::upload::Destination;
use integration_tests::{clients, unique};

async fn bucket() -> (aws_sdk_s3::Client, String) {
    let s3 = clients().await.s3;
    let name = unique("up");
    s3.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("bucket");
    (s3, name)
}

async fn read(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("get");
    out.body
        .collect()
        .await
        .expect("body")
        .into_bytes()
        .to_vec()
}

fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_large_output_goes_up_in_parts_and_arrives_whole() {
    let (s3, bucket) = bucket().await;
    // S3's smallest part is 5 MiB: three parts, the last one short.
    let part = 5 * 1024 * 1024;
    let data = bytes(2 * part + 123);
    let to = Destination {
        client: &s3,
        bucket: &bucket,
        key: "big.bin",
        content_type: "application/octet-stream",
    };
    let sent = to.upload(&data[..], part).await.expect("upload");
    assert_eq!(sent, data.len() as u64);
    assert_eq!(read(&s3, &bucket, "big.bin").await, data);
    let uploads = s3
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .expect("list uploads");
    assert!(uploads.uploads().is_empty(), "the upload was completed");
}

#[tokio::test]
async fn a_small_or_empty_output_is_one_put() {
    let (s3, bucket) = bucket().await;
    for (key, len) in [("small.bin", 1000), ("empty.bin", 0)] {
        let data = bytes(len);
        let to = Destination {
            client: &s3,
            bucket: &bucket,
            key,
            content_type: "application/octet-stream",
        };
        assert_eq!(
            to.upload(&data[..], 4096).await.expect("upload"),
            len as u64
        );
        assert_eq!(read(&s3, &bucket, key).await, data);
    }
}
