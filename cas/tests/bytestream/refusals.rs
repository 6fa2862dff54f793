//! Every kind of bad ByteStream input gets its exact gRPC code, leaves nothing visible and no
//! spool file behind, and the server keeps serving.

use bazel_remote_apis::google::bytestream::WriteRequest;
use cas::Digest;
use tonic::Code;

use super::support::*;

/// Asserts `result` failed with `code` and a message containing `needle`.
fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    let err = result.expect_err("should fail");
    assert_eq!(err.code(), code, "{err:?}");
    assert!(err.message().contains(needle), "{needle:?} not in {err:?}");
}

/// The upload name for a read name: `uploads/u/` inserted before its blob part.
fn to_upload(name: &str) -> String {
    let segments: Vec<&str> = name.split('/').collect();
    match segments
        .iter()
        .position(|s| *s == "blobs" || *s == "compressed-blobs")
    {
        Some(at) => {
            let (instance, blob) = segments.split_at(at);
            let mut parts = instance.to_vec();
            parts.extend(["uploads", "u"]);
            parts.extend(blob);
            parts.join("/")
        }
        None => format!("uploads/u/{name}"),
    }
}

/// After a refusal: the blob is invisible, nothing is spooled, the server still serves.
async fn assert_clean(fx: &Fixture, d: &Digest) {
    fx.assert_absent(d).await;
    assert_eq!(fx.spool_files(), 0, "a refused upload leaves no spool file");
    assert_eq!(fx.service.partial_uploads(), 0);
    fx.assert_serving().await;
}

#[tokio::test]
async fn malformed_resource_names() {
    let fx = Fixture::start().await;
    let data = b"some blob".to_vec();
    let d = Digest::of(&data);
    let (h, n) = (d.hash_hex(), d.size());
    let upper = h.to_uppercase();
    let cases = [
        (format!("../blobs/{h}/{n}"), "\"..\""),
        (format!("a/./blobs/{h}/{n}"), "\".\""),
        (format!("a//blobs/{h}/{n}"), "empty path segment"),
        (format!("blobs/{h}"), "missing size"),
        (format!("blobs/{upper}/{n}"), "64 lowercase hex"),
        (format!("blobs/{h}/-{n}"), "not a decimal number"),
        (format!("actions/blobs/{h}/{n}"), "reserved word"),
        (format!("x/operations/blobs/{h}/{n}"), "reserved word"),
        (
            format!("compressed-blobs/deflate/{h}/{n}"),
            "unsupported compressor",
        ),
        (
            format!("compressed-blobs/brotli/{h}/{n}"),
            "unsupported compressor",
        ),
        (
            format!("compressed-blobs/foo/{h}/{n}"),
            "unsupported compressor",
        ),
        (String::new(), "empty"),
    ];
    for (name, needle) in &cases {
        assert_code(fx.read(name, 0, 0).await, Code::InvalidArgument, needle);
        let upload = to_upload(name);
        let result = fx.upload(&upload, &data, 4).await;
        if name.is_empty() {
            assert_code(result, Code::InvalidArgument, "empty path segment");
        } else {
            assert_code(result, Code::InvalidArgument, needle);
            assert_code(fx.query(&upload).await, Code::InvalidArgument, needle);
        }
    }
    // The error names the resource.
    let name = format!("blobs/{upper}/{n}");
    assert_code(fx.read(&name, 0, 0).await, Code::InvalidArgument, &name);
    // Uploads need uploads/{id}/ and reads must not have it.
    assert_code(
        fx.upload(&blob_name(&d), &data, 4).await,
        Code::InvalidArgument,
        "missing uploads/",
    );
    assert_code(
        fx.read(&upload_name(&d), 0, 0).await,
        Code::InvalidArgument,
        "upload name",
    );
    assert_clean(&fx, &d).await;
}

#[tokio::test]
async fn protocol_violations() {
    let fx = Fixture::start().await;
    let data = random_bytes(10_000, 1);
    let d = Digest::of(&data);
    let name = upload_name(&d);

    // No requests at all; a first request without the name; a later one with another name.
    assert_code(
        fx.write(vec![]).await,
        Code::InvalidArgument,
        "ended before",
    );
    let mut reqs = requests(&name, &data, 5000, 0, true);
    reqs[0].resource_name.clear();
    assert_code(
        fx.write(reqs).await,
        Code::InvalidArgument,
        "must carry the resource",
    );
    let mut reqs = requests(&name, &data, 5000, 0, true);
    reqs[1].resource_name = upload_name(&d);
    assert_code(fx.write(reqs).await, Code::InvalidArgument, "differs from");
    assert_code(fx.query(&name).await, Code::NotFound, "no upload");
    assert_clean(&fx, &d).await;

    // A wrong first offset, and a later offset that skips ahead or repeats.
    assert_code(
        fx.write(requests(&name, &data, 5000, 7, true)).await,
        Code::InvalidArgument,
        "expected 0, got 7",
    );
    let mut reqs = requests(&name, &data, 2500, 0, true);
    reqs[2].write_offset += 1;
    assert_code(
        fx.write(reqs).await,
        Code::InvalidArgument,
        "expected 5000, got 5001",
    );
    let mut reqs = requests(&name, &data, 2500, 0, true);
    reqs[3].write_offset = 0;
    assert_code(
        fx.write(reqs).await,
        Code::InvalidArgument,
        "expected 7500, got 0",
    );
    assert_code(fx.query(&name).await, Code::NotFound, "no upload");
    assert_clean(&fx, &d).await;

    // Negative offsets.
    assert_code(
        fx.write(requests(&name, &data, 5000, -1, true)).await,
        Code::InvalidArgument,
        "expected 0, got -1",
    );
    assert_clean(&fx, &d).await;
}

#[tokio::test]
async fn overlong_truncated_and_wrong_content() {
    let fx = Fixture::start().await;
    let data = random_bytes(100_000, 2);
    let d = Digest::of(&data);

    // Overlong: one byte more than the digest's size, in the last request or mid-stream.
    let mut longer = data.clone();
    longer.push(0);
    assert_code(
        fx.upload(&upload_name(&d), &longer, 30_000).await,
        Code::InvalidArgument,
        "longer than its digest's size",
    );
    let name = upload_name(&d);
    let mut reqs = requests(&name, &longer, 30_000, 0, false);
    reqs.push(WriteRequest {
        resource_name: String::new(),
        write_offset: longer.len() as i64,
        finish_write: true,
        data: vec![],
    });
    assert_code(fx.write(reqs).await, Code::InvalidArgument, "longer");
    assert_code(fx.query(&name).await, Code::NotFound, "no upload");
    assert_clean(&fx, &d).await;

    // Truncated: finish_write one byte short; and an empty finishing request.
    assert_code(
        fx.upload(&upload_name(&d), &data[..data.len() - 1], 30_000)
            .await,
        Code::InvalidArgument,
        "truncated",
    );
    assert_code(
        fx.upload(&upload_name(&d), b"", 1).await,
        Code::InvalidArgument,
        "truncated",
    );
    assert_clean(&fx, &d).await;

    // Right size, wrong content.
    let mut wrong = data.clone();
    wrong[50_000] ^= 1;
    assert_code(
        fx.upload(&upload_name(&d), &wrong, 30_000).await,
        Code::InvalidArgument,
        "does not match its digest",
    );
    assert_clean(&fx, &d).await;
}

#[tokio::test]
async fn bad_zstd_uploads() {
    let fx = Fixture::start().await;
    let data = text_bytes(200_000, 3);
    let d = Digest::of(&data);
    let compressed = zstd::encode_all(&data[..], 3).unwrap();

    // Not zstd at all.
    assert_code(
        fx.upload(&zstd_upload_name(&d), &data, 50_000).await,
        Code::InvalidArgument,
        "not valid zstd",
    );
    assert_clean(&fx, &d).await;
    // A frame cut short.
    assert_code(
        fx.upload(
            &zstd_upload_name(&d),
            &compressed[..compressed.len() - 3],
            10_000,
        )
        .await,
        Code::InvalidArgument,
        "truncated",
    );
    assert_clean(&fx, &d).await;
    // More data than the digest's size, and the wrong data.
    let mut longer = data.clone();
    longer.extend_from_slice(b"x");
    let too_long = zstd::encode_all(&longer[..], 3).unwrap();
    assert_code(
        fx.upload(&zstd_upload_name(&d), &too_long, 10_000).await,
        Code::InvalidArgument,
        "longer",
    );
    let mut other = data.clone();
    other[0] ^= 1;
    let wrong = zstd::encode_all(&other[..], 3).unwrap();
    assert_code(
        fx.upload(&zstd_upload_name(&d), &wrong, 10_000).await,
        Code::InvalidArgument,
        "does not match its digest",
    );
    // A compressed stream resumed at neither the compressed nor the uncompressed offset.
    let name = zstd_upload_name(&d);
    fx.write(requests(&name, &compressed[..1000], 1000, 0, false))
        .await
        .unwrap();
    assert_code(
        fx.write(requests(&name, &compressed[1000..], 1000, 999, true))
            .await,
        Code::InvalidArgument,
        "expected 1000",
    );
    assert_clean(&fx, &d).await;
}

#[tokio::test]
async fn bad_reads() {
    let fx = Fixture::start().await;
    let data = random_bytes(1000, 4);
    let d = Digest::of(&data);
    fx.upload(&upload_name(&d), &data, 1000).await.unwrap();
    let name = blob_name(&d);

    assert_code(
        fx.read(&name, 1001, 0).await,
        Code::OutOfRange,
        "past the end",
    );
    assert_code(fx.read(&name, -1, 0).await, Code::OutOfRange, "negative");
    assert_code(
        fx.read(&name, 0, -1).await,
        Code::InvalidArgument,
        "negative",
    );
    assert_code(
        fx.read(&zstd_name(&d), 0, 10).await,
        Code::InvalidArgument,
        "read_limit must be 0",
    );
    assert_code(
        fx.read(&zstd_name(&d), 1001, 0).await,
        Code::OutOfRange,
        "past the end",
    );
    let missing = Digest::of(b"never uploaded");
    assert_code(
        fx.read(&blob_name(&missing), 0, 0).await,
        Code::NotFound,
        "not found",
    );
    assert_code(
        fx.read(&zstd_name(&missing), 0, 0).await,
        Code::NotFound,
        "not found",
    );
    assert_code(
        fx.read(&blob_name(&missing), 100, 0).await,
        Code::OutOfRange,
        "past the end",
    );
    assert_code(
        fx.query(&upload_name(&missing)).await,
        Code::NotFound,
        "no upload",
    );
    fx.assert_serving().await;
}
