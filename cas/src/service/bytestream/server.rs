//! The ByteStream gRPC server: `Write` decoded by [`write_stream`](super::write_stream) straight
//! off the HTTP/2 body, `Read` and `QueryWriteStatus` by the generated tonic server.
//!
//! Everything else about a `Write` call stays tonic's: the `grpc-encoding` check (an encoding
//! the server does not accept is `UNIMPLEMENTED` before any data is read), the response's
//! framing, compression and trailers, and how a `Status` is sent.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{ClientStreamingService, Grpc, NamedService};
use tonic::{Request, Response, Status, Streaming};

use super::write_stream::{BodyMessages, WriteRequests};
use super::{observe, write, ByteStreamService, Inner, MAX_MESSAGE_BYTES};
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::bytestream::{WriteRequest, WriteResponse};

const WRITE_PATH: &str = "/google.bytestream.ByteStream/Write";

/// The ByteStream service, ready to add to a tonic router.
#[derive(Clone, Debug)]
pub struct ByteStreamGrpc {
    inner: Arc<Inner>,
    generated: ByteStreamServer<ByteStreamService>,
}

impl ByteStreamGrpc {
    pub(super) fn new(service: ByteStreamService) -> Self {
        let inner = service.inner.clone();
        let generated = ByteStreamServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .accept_compressed(CompressionEncoding::Zstd);
        ByteStreamGrpc { inner, generated }
    }
}

impl NamedService for ByteStreamGrpc {
    const NAME: &'static str = "google.bytestream.ByteStream";
}

impl Service<http::Request<tonic::body::Body>> for ByteStreamGrpc {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != WRITE_PATH {
            return self.generated.call(request);
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // tonic checks the header below (and refuses what it does not accept) before the
            // service is called, so only these two can reach the messages.
            let encoding = match parts.headers.get("grpc-encoding") {
                Some(v) if v.as_bytes() == b"zstd" => Some(CompressionEncoding::Zstd),
                _ => None,
            };
            let messages = BodyMessages::new(body, encoding, MAX_MESSAGE_BYTES);
            let request = http::Request::from_parts(parts, tonic::body::Body::empty());
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Zstd);
            let mut grpc =
                Grpc::new(tonic_prost::ProstCodec::<WriteResponse, WriteRequest>::default())
                    .apply_compression_config(accept, EnabledCompressionEncodings::default())
                    .apply_max_message_size_config(
                        Some(MAX_MESSAGE_BYTES),
                        Some(MAX_MESSAGE_BYTES),
                    );
            let call = WriteCall {
                inner,
                messages: Some(messages),
            };
            Ok(grpc.client_streaming(call, request).await)
        })
    }
}

/// One `Write` call, holding the messages of its body (tonic's own `Streaming` is over an
/// empty body and goes unread).
struct WriteCall {
    inner: Arc<Inner>,
    messages: Option<BodyMessages>,
}

impl ClientStreamingService<WriteRequest> for WriteCall {
    type Response = WriteResponse;
    type Future = BoxFuture<Response<WriteResponse>, Status>;

    fn call(&mut self, _request: Request<Streaming<WriteRequest>>) -> Self::Future {
        let inner = self.inner.clone();
        let messages = self.messages.take();
        Box::pin(async move {
            let Some(messages) = messages else {
                return Err(Status::internal("a Write call was started twice"));
            };
            let body = write::write(&inner, WriteRequests::Body(messages));
            observe("ByteStream.Write", body).await.map(Response::new)
        })
    }
}
