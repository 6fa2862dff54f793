//! Connections to the target: channels from `cas::store::grpc::endpoint` (large HTTP/2 windows,
//! `TCP_NODELAY`, keep-alives), TLS for `https://` targets, and an interceptor that puts the
//! bearer token and REAPI `RequestMetadata` (tool name, one invocation id per run) on every call.

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;
use cas::proto::bytestream::byte_stream_client::ByteStreamClient;
use cas::store::grpc::MAX_MESSAGE_BYTES;
use prost::Message as _;
use reapi::action_cache_client::ActionCacheClient;
use reapi::capabilities_client::CapabilitiesClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use reapi::execution_client::ExecutionClient;
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::options::Config;

/// Why the target cannot be addressed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Target(String),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup for {target}: {message}")]
    Tls { target: String, message: String },
    #[error("the token is not valid in an HTTP header")]
    BadToken,
}

/// Adds `authorization` and `build.bazel.remote.execution.v2.requestmetadata-bin`.
#[derive(Clone)]
pub struct Metadata {
    authorization: Option<AsciiMetadataValue>,
    request_metadata: BinaryMetadataValue,
}

const REQUEST_METADATA_KEY: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

impl Metadata {
    pub fn new(token: Option<&str>, invocation_id: &str) -> Result<Self, ClientError> {
        let authorization = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| ClientError::BadToken)
            })
            .transpose()?;
        let meta = reapi::RequestMetadata {
            tool_details: Some(reapi::ToolDetails {
                tool_name: "farm-loadtest".into(),
                tool_version: env!("CARGO_PKG_VERSION").into(),
            }),
            tool_invocation_id: invocation_id.to_string(),
            correlated_invocations_id: invocation_id.to_string(),
            ..Default::default()
        };
        Ok(Metadata {
            authorization,
            request_metadata: BinaryMetadataValue::from_bytes(&meta.encode_to_vec()),
        })
    }
}

impl Interceptor for Metadata {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let md = request.metadata_mut();
        if let Some(auth) = &self.authorization {
            md.insert("authorization", auth.clone());
        }
        md.insert_bin(REQUEST_METADATA_KEY, self.request_metadata.clone());
        Ok(request)
    }
}

/// The transport every client uses.
pub type Svc = InterceptedService<Channel, Metadata>;

/// REAPI clients over one HTTP/2 connection.
#[derive(Clone)]
pub struct Clients {
    pub cas: ContentAddressableStorageClient<Svc>,
    pub bytestream: ByteStreamClient<Svc>,
    pub ac: ActionCacheClient<Svc>,
    pub exec: ExecutionClient<Svc>,
    pub ops: OperationsClient<Svc>,
    pub capabilities: CapabilitiesClient<Svc>,
}

impl Clients {
    fn new(channel: Channel, meta: Metadata) -> Self {
        let svc = InterceptedService::new(channel, meta);
        Clients {
            cas: ContentAddressableStorageClient::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            bytestream: ByteStreamClient::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            ac: ActionCacheClient::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            exec: ExecutionClient::new(svc.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            ops: OperationsClient::new(svc.clone()),
            capabilities: CapabilitiesClient::new(svc),
        }
    }
}

/// A pool of connections; request `i` goes on connection `i % n`.
#[derive(Clone)]
pub struct Pool {
    conns: Vec<Clients>,
}

impl Pool {
    /// `config.connections` lazily connected channels to `config.target`: a target that is
    /// down makes each request fail with `UNAVAILABLE` (counted), not the run.
    pub fn open(config: &Config, invocation_id: &str) -> Result<Self, ClientError> {
        let meta = Metadata::new(config.token.as_deref(), invocation_id)?;
        let mut endpoint = cas::store::grpc::endpoint(&config.target)
            .map_err(|e| ClientError::Target(e.to_string()))?
            .connect_timeout(config.timeout.min(std::time::Duration::from_secs(10)));
        if endpoint.uri().scheme_str() == Some("https") {
            install_crypto_provider();
            endpoint = endpoint
                .tls_config(tls_config(config)?)
                .map_err(|e| ClientError::Tls {
                    target: config.target.clone(),
                    message: e.to_string(),
                })?;
        } else if config.tls.ca_cert.is_some() || config.tls.client_identity.is_some() {
            return Err(ClientError::Target(format!(
                "TLS options given but {} is not an https:// URL",
                config.target
            )));
        }
        let conns = (0..config.connections.max(1))
            .map(|_| Clients::new(endpoint.connect_lazy(), meta.clone()))
            .collect();
        Ok(Pool { conns })
    }

    pub fn get(&self, i: usize) -> &Clients {
        &self.conns[i % self.conns.len()]
    }
}

/// Makes ring the process's rustls crypto provider unless one is installed already. Needed
/// because a build that also links aws-lc-rs (the S3 SDK does) leaves rustls two candidates,
/// and it then panics on the first TLS handshake instead of choosing.
pub fn install_crypto_provider() {
    // An Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn tls_config(config: &Config) -> Result<ClientTlsConfig, ClientError> {
    let tls = &config.tls;
    let mut c = ClientTlsConfig::new();
    c = match &tls.ca_cert {
        Some(path) => c.ca_certificate(Certificate::from_pem(read(path)?)),
        None => c.with_native_roots(),
    };
    if let Some(domain) = &tls.domain {
        c = c.domain_name(domain.clone());
    }
    if let Some((cert, key)) = &tls.client_identity {
        c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(c)
}

/// The server's batch limit (`max_batch_total_size_bytes`; 0 means none), or `None` when
/// GetCapabilities fails.
pub async fn max_batch_bytes(
    clients: &Clients,
    instance: &str,
) -> Result<Option<u64>, tonic::Status> {
    let caps = clients
        .capabilities
        .clone()
        .get_capabilities(reapi::GetCapabilitiesRequest {
            instance_name: instance.to_string(),
        })
        .await?
        .into_inner();
    Ok(caps
        .cache_capabilities
        .map(|c| c.max_batch_total_size_bytes)
        .filter(|n| *n > 0)
        .map(|n| n as u64))
}
