//! The gRPC framing of `Write`, which the server cuts out of the HTTP/2 body itself: messages
//! split across DATA frames at any byte, gRPC-level zstd compression, and the framing errors
//! (compressed flag without an encoding, a bad flag, a message over the limit, a body that ends
//! inside a message, an encoding the server does not accept, bytes that are not a
//! `WriteRequest`), and a client that resets its stream inside a message. Bodies tonic's client
//! would never send go through a raw `h2` client.

use bazel_remote_apis::google::bytestream::{WriteRequest, WriteResponse};
use bytes::Bytes;
use cas::service::bytestream::MAX_MESSAGE_BYTES;
use cas::Digest;
use prost::Message as _;
use tonic::codec::CompressionEncoding;
use tonic::codegen::http;
use tonic::Code;

use super::support::*;

/// What the server answered a raw Write: the gRPC status and message, and the committed size
/// if it answered OK.
#[derive(Debug)]
struct RawReply {
    code: Code,
    message: String,
    committed: Option<i64>,
}

/// `requests` as a gRPC body: each message prefixed by flag 0 and its length.
fn body_of(requests: &[WriteRequest]) -> Vec<u8> {
    let mut body = Vec::new();
    for r in requests {
        body.extend_from_slice(&framed(0, &r.encode_to_vec()));
    }
    body
}

/// One gRPC length-prefixed message with compressed flag `flag`.
fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Undoes the percent-encoding of a `grpc-message` header.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends one Write with extra `headers` whose body is `frames`, each its own DATA frame (the
/// last one ends the stream, unless `end` is false, in which case the stream stays open until
/// the server answers).
async fn raw_write(
    fx: &Fixture,
    headers: &[(&str, &str)],
    frames: &[&[u8]],
    end: bool,
) -> RawReply {
    let tcp = tokio::net::TcpStream::connect(fx.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post(format!(
        "http://{}/google.bytestream.ByteStream/Write",
        fx.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    for (i, frame) in frames.iter().enumerate() {
        let last = end && i + 1 == frames.len();
        send.send_data(Bytes::copy_from_slice(frame), last).unwrap();
    }
    if end && frames.is_empty() {
        send.send_data(Bytes::new(), true).unwrap();
    }
    let response = response.await.unwrap();
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    let status_of = |map: &http::HeaderMap| {
        map.get("grpc-status")
            .map(|v| v.to_str().unwrap().parse::<i32>().unwrap())
    };
    let message_of = |map: &http::HeaderMap| {
        map.get("grpc-message")
            .map(|v| percent_decode(v.to_str().unwrap()))
            .unwrap_or_default()
    };
    let (code, message) = match status_of(&trailers) {
        Some(code) => (code, message_of(&trailers)),
        None => (
            status_of(&parts.headers).expect("a grpc-status in headers or trailers"),
            message_of(&parts.headers),
        ),
    };
    drop(send);
    drop(client);
    connection.abort();
    let code = Code::from_i32(code);
    let committed = (code == Code::Ok).then(|| {
        assert!(data.len() >= 5, "an OK reply carries a WriteResponse");
        WriteResponse::decode(&data[5..]).unwrap().committed_size
    });
    RawReply {
        code,
        message,
        committed,
    }
}

#[tokio::test]
async fn a_write_cut_into_frames_at_any_byte_round_trips() {
    let fx = Fixture::start().await;
    for (seed, frame) in [1usize, 2, 3, 4, 5, 6, 7, 999, 1000, 1001, 4096, usize::MAX]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(3000, 900 + seed as u64);
        let d = Digest::of(&data);
        let body = body_of(&requests(&upload_name(&d), &data, 1000, 0, true));
        let frames: Vec<&[u8]> = body.chunks(frame.min(body.len())).collect();
        let reply = raw_write(&fx, &[], &frames, true).await;
        assert_eq!(reply.code, Code::Ok, "frames of {frame} bytes: {reply:?}");
        assert_eq!(reply.committed, Some(3000));
        assert_eq!(fx.read(&blob_name(&d), 0, 0).await.unwrap(), data);
    }
    // The stream may also end with an empty DATA frame after the last message.
    let data = random_bytes(10, 990);
    let d = Digest::of(&data);
    let body = body_of(&requests(&upload_name(&d), &data, 4, 0, true));
    let reply = raw_write(&fx, &[], &[&body, &[]], true).await;
    assert_eq!(reply.committed, Some(10), "{reply:?}");
}

#[tokio::test]
async fn a_write_compressed_by_grpc_zstd_round_trips() {
    let fx = Fixture::start().await;
    let data = text_bytes(5 << 20, 7);
    let d = Digest::of(&data);
    let mut client = fx.client().send_compressed(CompressionEncoding::Zstd);
    let stream = tokio_stream::iter(requests(&upload_name(&d), &data, 1 << 20, 0, true));
    let committed = client
        .write(stream)
        .await
        .unwrap()
        .into_inner()
        .committed_size;
    assert_eq!(committed, data.len() as i64);
    assert_eq!(fx.read(&blob_name(&d), 0, 0).await.unwrap(), data);
}

/// Asserts a raw write was refused with `code` and a message containing `needle`, that nothing
/// became visible, and that the server still serves.
async fn assert_refused(fx: &Fixture, reply: RawReply, code: Code, needle: &str, d: &Digest) {
    assert_eq!(reply.code, code, "{reply:?}");
    assert!(reply.message.contains(needle), "{reply:?}");
    fx.assert_absent(d).await;
    fx.assert_serving().await;
}

#[tokio::test]
async fn framing_errors_get_tonics_statuses() {
    let fx = Fixture::start().await;
    let data = random_bytes(100, 77);
    let d = Digest::of(&data);
    let message = request(&upload_name(&d), 0, &data, true).encode_to_vec();

    let reply = raw_write(&fx, &[], &[&framed(1, &message)], true).await;
    let needle = "compressed-flag but no grpc-encoding";
    assert_refused(&fx, reply, Code::Internal, needle, &d).await;

    let reply = raw_write(&fx, &[], &[&framed(2, &message)], true).await;
    assert_refused(
        &fx,
        reply,
        Code::Internal,
        "invalid compression flag: 2",
        &d,
    )
    .await;

    let whole = framed(0, &message);
    let reply = raw_write(&fx, &[], &[&whole[..whole.len() - 1]], true).await;
    assert_refused(&fx, reply, Code::Internal, "Unexpected EOF", &d).await;
    let reply = raw_write(&fx, &[], &[&whole[..3]], true).await;
    assert_refused(&fx, reply, Code::Internal, "Unexpected EOF", &d).await;

    // Only the prefix is sent: the length alone is refused, without waiting for the data.
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes());
    let reply = raw_write(&fx, &[], &[&prefix], false).await;
    assert_refused(&fx, reply, Code::OutOfRange, "message length too large", &d).await;

    let not_protobuf = framed(0, &[0xff, 0xff, 0xff]);
    let reply = raw_write(&fx, &[], &[&not_protobuf], true).await;
    assert_refused(
        &fx,
        reply,
        Code::Internal,
        "failed to decode Protobuf message",
        &d,
    )
    .await;
}

#[tokio::test]
async fn grpc_encodings_the_server_does_not_accept_are_unimplemented() {
    let fx = Fixture::start().await;
    let data = random_bytes(100, 78);
    let d = Digest::of(&data);
    let body = body_of(&requests(&upload_name(&d), &data, 100, 0, true));
    let reply = raw_write(&fx, &[("grpc-encoding", "gzip")], &[&body], true).await;
    assert_refused(&fx, reply, Code::Unimplemented, "gzip", &d).await;
}

/// Uploads `data` as one `WriteRequest` in one zstd-compressed gRPC message.
async fn zstd_message_write(fx: &Fixture, data: &[u8]) -> RawReply {
    let message = request(&upload_name(&Digest::of(data)), 0, data, true).encode_to_vec();
    let compressed = zstd::encode_all(&message[..], 3).unwrap();
    let frame = framed(1, &compressed);
    raw_write(fx, &[("grpc-encoding", "zstd")], &[&frame], true).await
}

#[tokio::test]
async fn a_zstd_message_inflating_over_the_limit_is_resource_exhausted() {
    let fx = Fixture::start().await;
    let data = vec![0u8; MAX_MESSAGE_BYTES];
    let reply = zstd_message_write(&fx, &data).await;
    let d = Digest::of(&data);
    assert_refused(&fx, reply, Code::ResourceExhausted, "size limit", &d).await;

    // Within the limit, a zstd-compressed message is accepted.
    let reply = zstd_message_write(&fx, &random_bytes(1000, 79)).await;
    assert_eq!(reply.committed, Some(1000), "{reply:?}");
}

#[tokio::test]
async fn a_client_that_cancels_inside_a_message_keeps_what_it_had_committed() {
    let fx = Fixture::start().await;
    let data = random_bytes(3000, 80);
    let d = Digest::of(&data);
    let name = upload_name(&d);
    let body = body_of(&requests(&name, &data, 1000, 0, true));
    let first_and_a_half = &body[..body.len() / 2];

    let tcp = tokio::net::TcpStream::connect(fx.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!(
        "http://{}/google.bytestream.ByteStream/Write",
        fx.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (_response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(Bytes::copy_from_slice(first_and_a_half), false)
        .unwrap();
    fx.wait_committed(&name, 1000).await;
    send.send_reset(h2::Reason::CANCEL);

    // The upload outlives the cancelled stream and resumes where it was committed.
    fx.wait_committed(&name, 1000).await;
    let mut rest = requests("", &data[1000..], 1000, 1000, true);
    rest[0].resource_name = name.clone();
    assert_eq!(fx.write(rest).await.unwrap(), 3000);
    assert_eq!(fx.read(&blob_name(&d), 0, 0).await.unwrap(), data);
    drop(client);
    connection.abort();
}
