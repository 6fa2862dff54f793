//! An S3-backed blob store (AWS S3 or any S3-compatible server: MinIO, SeaweedFS, s3s, Ceph).
//!
//! Each blob is one object under `{prefix}{hash}-{size}` ([`Digest::key`]).
//!
//! - `put` reads up to one part from the input first: a blob that fits is sent with a single
//!   PutObject; a larger one becomes a multipart upload, streamed part by part with a few parts
//!   in flight, so memory stays at a handful of parts whatever the blob's size. Any failure,
//!   including an `Err` item from the input stream, aborts the multipart upload: S3 only makes
//!   an object visible on CompleteMultipartUpload, so nothing is left behind.
//! - `get` streams the object's body (ranged with an HTTP `Range` header) as it arrives.
//! - `find_missing` issues one HeadObject per digest, many at a time.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::{Buf, Bytes};
use futures::StreamExt;

use super::{dedup_in_order, BlobStore, ByteRange, ChunkStream};
use crate::digest::Digest;
use crate::error::StoreError;

mod upload;
use upload::PartReader;

/// S3's smallest part (all parts but the last must be at least this big).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// S3's largest object: 5 TiB.
pub const MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// S3's most parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// The default part size: 16 MiB.
pub const DEFAULT_PART_SIZE: u64 = 16 * 1024 * 1024;
/// The default number of concurrent HeadObject requests in `find_missing`.
pub const DEFAULT_MAX_CONCURRENCY: usize = 128;
/// How long the credentials probe after a failed upload may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct S3Options {
    /// The bucket holding the blobs; it must exist.
    pub bucket: String,
    /// Prepended to every object key (e.g. `"cas/"`).
    pub prefix: String,
    /// A custom endpoint (`http://127.0.0.1:9000`) for S3-compatible servers; `None` for AWS
    /// (or whatever `AWS_ENDPOINT_URL` says).
    pub endpoint: Option<String>,
    /// The signing region (`us-east-1` for most S3-compatible servers).
    pub region: String,
    /// Static credentials; when either is `None` the default AWS credential chain is used
    /// (environment variables, profile files, web identity, instance metadata).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Address buckets as `endpoint/bucket/key` rather than `bucket.endpoint/key`: what
    /// S3-compatible servers expect, and still accepted by AWS.
    pub force_path_style: bool,
    /// Size of each multipart-upload part, and the largest blob sent as a single PutObject.
    /// Between 5 MiB and 5 GiB; default 16 MiB.
    pub part_size_bytes: u64,
    /// Most HeadObject requests in flight during `find_missing`; default 128.
    pub max_concurrency: usize,
}

impl S3Options {
    /// Options for `bucket` with every other field at its default.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Options {
            bucket: bucket.into(),
            ..Self::default()
        }
    }
}

impl Default for S3Options {
    /// No bucket, no prefix, no endpoint, region `us-east-1`, the default credential chain,
    /// path-style addressing, 16 MiB parts, 128 concurrent HeadObjects.
    fn default() -> Self {
        S3Options {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            region: "us-east-1".to_string(),
            access_key_id: None,
            secret_access_key: None,
            force_path_style: true,
            part_size_bytes: DEFAULT_PART_SIZE,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
        }
    }
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("force_path_style", &self.force_path_style)
            .field("part_size_bytes", &self.part_size_bytes)
            .field("max_concurrency", &self.max_concurrency)
            .finish()
    }
}

/// A [`BlobStore`] keeping each blob as one S3 object.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: u64,
    max_concurrency: usize,
    /// Endpoint and bucket, for error messages.
    location: String,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.location)
            .field("prefix", &self.prefix)
            .field("part_size", &self.part_size)
            .field("max_concurrency", &self.max_concurrency)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds a client for `cfg` after checking it. Does not contact the server (a wrong
    /// endpoint or key shows on the first request, as [`StoreError::Unavailable`]); it is
    /// async because the default credential chain is resolved through aws-config.
    pub async fn new(cfg: S3Options) -> Result<Self, StoreError> {
        if cfg.bucket.is_empty() {
            return Err(StoreError::InvalidArgument(
                "S3 store: the bucket name is empty".into(),
            ));
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&cfg.part_size_bytes) {
            return Err(StoreError::InvalidArgument(format!(
                "S3 store: part size {} bytes is outside S3's limits of {MIN_PART_SIZE} (5 MiB) \
                 to {MAX_PART_SIZE} (5 GiB)",
                cfg.part_size_bytes
            )));
        }
        if cfg.max_concurrency == 0 {
            return Err(StoreError::InvalidArgument(
                "S3 store: max_concurrency must be at least 1".into(),
            ));
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()));
        match (&cfg.access_key_id, &cfg.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret,
                    None,
                    None,
                    "farm-config",
                ));
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::InvalidArgument(
                    "S3 store: give both access_key_id and secret_access_key, or neither (to \
                     use the default AWS credential chain)"
                        .into(),
                ))
            }
        }
        let shared = loader.load().await;
        // A request must have its response headers within this time: a fixed allowance plus
        // one second per MiB of part (an UploadPart's response comes after its whole body).
        let read_timeout = Duration::from_secs(30 + cfg.part_size_bytes / (1024 * 1024));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(read_timeout)
            .build();
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.force_path_style)
            .timeout_config(timeouts);
        if let Some(endpoint) = &cfg.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        let endpoint = cfg.endpoint.as_deref().unwrap_or("AWS S3");
        Ok(S3Store {
            client: Client::from_conf(conf.build()),
            location: format!("bucket {:?} at {endpoint}", cfg.bucket),
            bucket: cfg.bucket,
            prefix: cfg.prefix,
            part_size: cfg.part_size_bytes,
            max_concurrency: cfg.max_concurrency,
        })
    }

    /// The underlying SDK client (for administration such as creating the bucket in tests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key of `digest`.
    pub fn key(&self, digest: &Digest) -> String {
        format!("{}{}", self.prefix, digest.key())
    }

    /// The part size for a blob: the configured one, grown if needed so a blob of the size the
    /// digest announces fits in S3's 10,000 parts.
    fn part_size_for(&self, digest: &Digest) -> u64 {
        let needed = digest
            .size()
            .div_ceil(MAX_PARTS)
            .next_multiple_of(1024 * 1024);
        self.part_size.max(needed).min(MAX_PART_SIZE)
    }

    /// Turns an SDK error into a store error whose message says what failed where.
    fn map_err<E>(&self, op: &str, digest: &Digest, e: SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        map_sdk_error(
            op,
            format!("S3 {op} of blob {digest} in {}", self.location),
            Some(digest),
            e,
        )
    }

    /// The length of the object, or `NotFound`.
    async fn head_len(&self, digest: &Digest) -> Result<u64, StoreError> {
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(digest))
            .send()
            .await;
        match result {
            Ok(out) => Ok(out.content_length().unwrap_or(0).max(0) as u64),
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 403 => {
                self.diagnose_head_403(digest).await
            }
            Err(e) => Err(self.map_err("HeadObject", digest, e)),
        }
    }

    /// A HeadObject answer has no body, so its 403 does not say why. S3 answers 403 instead of
    /// 404 for a key that does not exist when the credentials lack `s3:ListBucket`, and also
    /// when it refuses the credentials themselves; a one-byte GetObject of the same key gets an
    /// error body that tells the two apart.
    async fn diagnose_head_403(&self, digest: &Digest) -> Result<u64, StoreError> {
        let ctx = format!(
            "S3 HeadObject of blob {digest} in {} failed: HTTP 403 (HEAD answers have no \
             reason)",
            self.location
        );
        let probe = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(digest))
            .range("bytes=0-0")
            .send();
        let (status, code) = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            // Readable after all (the HEAD was refused on its own): the length is in
            // `Content-Range: bytes 0-0/LEN`.
            Ok(Ok(out)) => {
                let total = out
                    .content_range()
                    .and_then(|r| r.rsplit('/').next())
                    .and_then(|n| n.parse().ok());
                return Ok(total.unwrap_or(out.content_length().unwrap_or(0).max(0) as u64));
            }
            Ok(Err(SdkError::ServiceError(e))) => (
                e.raw().status().as_u16(),
                e.err().code().unwrap_or("").to_string(),
            ),
            Ok(Err(e)) => {
                return Err(StoreError::FailedPrecondition(format!(
                    "{ctx}; a GetObject probe of the key failed too ({}). {}",
                    DisplayErrorContext(&e),
                    self.list_bucket_hint()
                )))
            }
            Err(_) => {
                return Err(StoreError::FailedPrecondition(format!(
                    "{ctx}; a GetObject probe of the key did not answer. {}",
                    self.list_bucket_hint()
                )))
            }
        };
        let probed = format!("{ctx}; a GetObject probe of the key answered HTTP {status} {code}");
        match (status, code.as_str()) {
            (404, _) | (_, "NoSuchKey") => Err(StoreError::NotFound(*digest)),
            // A one-byte range of an empty object.
            (416, _) | (_, "InvalidRange") => Ok(0),
            (_, "AccessDenied") | (403, "") => Err(StoreError::FailedPrecondition(format!(
                "{probed}: {}",
                self.list_bucket_hint()
            ))),
            (status, code) if refuses_credentials(status, code) => Err(StoreError::Unavailable(
                format!("{probed} -- {CREDENTIALS_HINT}"),
            )),
            _ => Err(classify_service_error(
                "GetObject",
                status,
                &code,
                Some(digest),
                probed,
            )),
        }
    }

    /// What a 403 AccessDenied on a lookup means and how to fix it, for this bucket.
    fn list_bucket_hint(&self) -> String {
        format!(
            "{LIST_BUCKET_HINT}: allow s3:ListBucket on arn:aws:s3:::{bucket} besides \
             s3:GetObject and s3:PutObject on arn:aws:s3:::{bucket}/*",
            bucket = self.bucket
        )
    }

    /// Whether the object exists.
    async fn exists(&self, digest: &Digest) -> Result<bool, StoreError> {
        match self.head_len(digest).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sends the whole of a small blob with one PutObject.
    async fn put_single(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        let len = data.len() as i64;
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(digest))
            .content_length(len)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.map_err("PutObject", digest, e));
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.diagnose_upload_failure(e).await),
        }
    }

    /// A server that rejects a request's signature may close the connection while the body is
    /// still being sent, so an upload fails as a broken pipe rather than a 403. A body-less
    /// HeadBucket tells the two apart, so the error can say what is actually wrong.
    async fn diagnose_upload_failure(&self, e: StoreError) -> StoreError {
        let StoreError::Unavailable(msg) = e else {
            return e;
        };
        if msg.contains(CREDENTIALS_HINT) {
            return StoreError::Unavailable(msg);
        }
        let probe = self.client.head_bucket().bucket(&self.bucket).send();
        if let Ok(Err(SdkError::ServiceError(e))) = tokio::time::timeout(PROBE_TIMEOUT, probe).await
        {
            let status = e.raw().status().as_u16();
            let code = e.err().code().unwrap_or("");
            if refuses_credentials(status, code) {
                return StoreError::Unavailable(format!(
                    "{msg} -- a HeadBucket probe of {} was refused with HTTP {status} {code}: \
                     {CREDENTIALS_HINT}",
                    self.location
                ));
            }
        }
        StoreError::Unavailable(msg)
    }

    /// Streams an object's body out as it arrives.
    fn body_stream(&self, digest: &Digest, body: ByteStream) -> ChunkStream {
        let ctx = format!("reading blob {digest} from {}", self.location);
        Box::pin(futures::stream::unfold(
            Some((body, ctx)),
            |state| async move {
                let (mut body, ctx) = state?;
                match body.next().await {
                    None => None,
                    Some(Ok(chunk)) => Some((Ok(chunk), Some((body, ctx)))),
                    Some(Err(e)) => Some((
                        Err(StoreError::Unavailable(format!(
                            "{ctx} failed: {}",
                            DisplayErrorContext(&e)
                        ))),
                        None,
                    )),
                }
            },
        ))
    }

    /// Answers a range the server refused as unsatisfiable: an empty read at the very end of
    /// the object is valid (S3 says 416 to `bytes=LEN-`), anything else is `OutOfRange`.
    async fn unsatisfiable(
        &self,
        digest: &Digest,
        range: ByteRange,
    ) -> Result<ChunkStream, StoreError> {
        let len = self.head_len(digest).await?;
        let (start, end) = range.clamp(len)?;
        if start == end {
            return Ok(empty());
        }
        // The object grew between the two requests (values under one key can change in the
        // action cache): read again.
        self.get_ranged(digest, range, false).await
    }

    /// GetObject for a range; `retry_416` allows one detour through [`Self::unsatisfiable`].
    async fn get_ranged(
        &self,
        digest: &Digest,
        range: ByteRange,
        retry_416: bool,
    ) -> Result<ChunkStream, StoreError> {
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(digest));
        if !range.is_all() {
            // An end past the largest possible object is the same as no end (and huge numbers
            // are refused by some servers).
            let end = range
                .limit
                .map(|limit| range.offset.saturating_add(limit))
                .filter(|end| *end <= MAX_OBJECT_SIZE);
            req = req.range(match end {
                Some(end) => format!("bytes={}-{}", range.offset, end - 1),
                None => format!("bytes={}-", range.offset),
            });
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                return match self.map_err("GetObject", digest, e) {
                    StoreError::OutOfRange(_) if retry_416 => {
                        Box::pin(self.unsatisfiable(digest, range)).await
                    }
                    other => Err(other),
                };
            }
        };
        let full_body = !range.is_all() && out.content_range().is_none();
        let len = out.content_length().unwrap_or(0).max(0) as u64;
        let body = self.body_stream(digest, out.body);
        if full_body {
            // A server that ignores Range sends the whole object (200): cut the range here.
            let (start, end) = range.clamp(len)?;
            return Ok(slice_stream(body, start, end - start));
        }
        Ok(body)
    }
}

/// The empty chunk stream.
fn empty() -> ChunkStream {
    Box::pin(futures::stream::empty())
}

/// Skips `skip` bytes of `stream` and yields the next `take`.
fn slice_stream(stream: ChunkStream, skip: u64, take: u64) -> ChunkStream {
    Box::pin(futures::stream::unfold(
        (stream, skip, take),
        |(mut stream, mut skip, mut take)| async move {
            while take > 0 {
                let mut chunk = match stream.next().await? {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), (stream, 0, 0))),
                };
                let skipped = skip.min(chunk.len() as u64);
                chunk.advance(skipped as usize);
                skip -= skipped;
                chunk.truncate(take.min(chunk.len() as u64) as usize);
                take -= chunk.len() as u64;
                if !chunk.is_empty() {
                    return Some((Ok(chunk), (stream, skip, take)));
                }
            }
            None
        },
    ))
}

/// Appended to errors caused by refused credentials.
const CREDENTIALS_HINT: &str = "S3 refused the request's credentials or permissions: check the \
                                access key id, the secret key and the bucket policy";

/// Starts the message of errors S3 answered with 403 AccessDenied on a lookup.
const LIST_BUCKET_HINT: &str = "the credentials were accepted but refused access to the blob. \
                                S3 answers 403 instead of 404 for a key that does not exist \
                                when the credentials lack the s3:ListBucket permission on the \
                                bucket, so every missing blob looks like a refusal";

/// Appended to errors S3 answered with 403 AccessDenied on a write.
const PUT_OBJECT_HINT: &str = "the credentials were accepted but may not write: allow \
                               s3:PutObject (and s3:AbortMultipartUpload) on the bucket's \
                               objects";

/// Whether S3's answer means the request's signature, key or permissions were refused.
fn refuses_credentials(status: u16, code: &str) -> bool {
    matches!(status, 401 | 403)
        || matches!(
            code,
            "SignatureDoesNotMatch"
                | "InvalidAccessKeyId"
                | "AccessDenied"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired"
                | "InvalidSecurity"
        )
}

/// Maps S3's answer to a request (`op`, e.g. "GetObject") it refused.
fn classify_service_error(
    op: &str,
    status: u16,
    code: &str,
    digest: Option<&Digest>,
    msg: String,
) -> StoreError {
    match (status, code) {
        // The credentials are fine but a permission is missing: a configuration problem that
        // retrying does not fix.
        (_, "AccessDenied") => match op {
            "HeadObject" | "GetObject" => StoreError::FailedPrecondition(format!(
                "{msg} -- {LIST_BUCKET_HINT}: allow s3:ListBucket on the bucket besides \
                 s3:GetObject and s3:PutObject on its objects"
            )),
            _ => StoreError::FailedPrecondition(format!("{msg} -- {PUT_OBJECT_HINT}")),
        },
        (_, "NoSuchBucket") => StoreError::FailedPrecondition(msg),
        (_, "NoSuchKey" | "NotFound") | (404, _) => match digest {
            Some(d) => StoreError::NotFound(*d),
            None => StoreError::Internal(msg),
        },
        (_, "InvalidRange") | (416, _) => StoreError::OutOfRange(msg),
        (status, code) if refuses_credentials(status, code) => {
            StoreError::Unavailable(format!("{msg} -- {CREDENTIALS_HINT}"))
        }
        (_, "EntityTooLarge") => StoreError::ResourceExhausted(msg),
        (s, _) if s >= 500 => StoreError::Unavailable(msg),
        _ => StoreError::Internal(msg),
    }
}

/// Turns an SDK error into a store error; `ctx` says what failed where, `digest` is the blob a
/// 404 is about (`None` when a 404 cannot mean "no such blob").
fn map_sdk_error<E>(op: &str, ctx: String, digest: Option<&Digest>, e: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match &e {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            let mut msg = format!("{ctx} failed: HTTP {status}");
            for detail in [code, service.err().message().unwrap_or("")] {
                if !detail.is_empty() {
                    msg.push(' ');
                    msg.push_str(detail);
                }
            }
            classify_service_error(op, status, code, digest, msg)
        }
        SdkError::ConstructionFailure(_) => StoreError::Internal(format!(
            "{ctx}: could not build the request: {}",
            DisplayErrorContext(&e)
        )),
        // Dispatch failures (connection refused or reset, DNS, missing credentials), timeouts,
        // and unparseable responses: the backend is not usable right now.
        _ => StoreError::Unavailable(format!("{ctx} failed: {}", DisplayErrorContext(&e))),
    }
}

#[async_trait]
impl BlobStore for S3Store {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        let unique = dedup_in_order(digests);
        let mut present = vec![false; unique.len()];
        let jobs: Vec<(usize, Digest)> = unique.iter().copied().enumerate().collect();
        let mut answers = futures::stream::iter(jobs)
            .map(|(i, d)| async move { self.exists(&d).await.map(|here| (i, here)) })
            .buffer_unordered(self.max_concurrency);
        while let Some(answer) = answers.next().await {
            let (i, here) = answer?;
            present[i] = here;
        }
        Ok(unique
            .into_iter()
            .zip(present)
            .filter_map(|(d, here)| (!here).then_some(d))
            .collect())
    }

    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
        if range.limit == Some(0) {
            // Nothing to read, but the blob must exist and the offset be inside it.
            let len = self.head_len(digest).await?;
            range.clamp(len)?;
            return Ok(empty());
        }
        if range.offset > MAX_OBJECT_SIZE {
            // Past the end of any object: say NotFound or OutOfRange without a ranged GET.
            return self.unsatisfiable(digest, range).await;
        }
        self.get_ranged(digest, range, true).await
    }

    async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError> {
        let part_size = usize::try_from(self.part_size_for(digest)).map_err(|_| {
            StoreError::ResourceExhausted(format!("blob {digest} is too large for this host"))
        })?;
        let mut reader = PartReader::new(data);
        let first = reader.read_part(part_size).await?;
        if first.len() < part_size || reader.at_end().await? {
            return self.put_single(digest, first).await;
        }
        self.put_multipart(digest, first, &mut reader, part_size)
            .await
    }

    fn kind(&self) -> &'static str {
        "s3"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that, like many, panics if polled after its end (`unfold` does).
    pub(super) fn chunks(parts: &[&'static [u8]]) -> ChunkStream {
        let items: Vec<&'static [u8]> = parts.to_vec();
        Box::pin(futures::stream::unfold(
            items.into_iter(),
            |mut it| async move {
                let part = it.next()?;
                Some((Ok(Bytes::from_static(part)), it))
            },
        ))
    }

    #[tokio::test]
    async fn slice_stream_cuts_across_chunks() {
        let s = slice_stream(chunks(&[b"abc", b"defgh", b"ij"]), 2, 5);
        let got = crate::store::collect(s).await.unwrap();
        assert_eq!(&got[..], b"cdefg");
        let s = slice_stream(chunks(&[b"abc"]), 3, 0);
        assert!(crate::store::collect(s).await.unwrap().is_empty());
    }

    #[test]
    fn service_errors_are_classified() {
        let d = Digest::of(b"x");
        let m = || "m".to_string();
        assert!(matches!(
            classify_service_error("GetObject", 404, "NoSuchKey", Some(&d), m()),
            StoreError::NotFound(_)
        ));
        assert!(matches!(
            classify_service_error("GetObject", 404, "", Some(&d), m()),
            StoreError::NotFound(_)
        ));
        assert!(matches!(
            classify_service_error("GetObject", 404, "NoSuchBucket", Some(&d), m()),
            StoreError::FailedPrecondition(_)
        ));
        assert!(matches!(
            classify_service_error("GetObject", 416, "", Some(&d), m()),
            StoreError::OutOfRange(_)
        ));
        assert!(matches!(
            classify_service_error("GetObject", 403, "", Some(&d), m()),
            StoreError::Unavailable(_)
        ));
        let StoreError::FailedPrecondition(msg) =
            classify_service_error("GetObject", 403, "AccessDenied", Some(&d), m())
        else {
            panic!("AccessDenied on a read is FailedPrecondition")
        };
        assert!(msg.contains("s3:ListBucket"), "{msg}");
        let StoreError::FailedPrecondition(msg) =
            classify_service_error("PutObject", 403, "AccessDenied", Some(&d), m())
        else {
            panic!("AccessDenied on a write is FailedPrecondition")
        };
        assert!(msg.contains("s3:PutObject"), "{msg}");
        assert!(matches!(
            classify_service_error("GetObject", 400, "SignatureDoesNotMatch", None, m()),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classify_service_error("GetObject", 503, "SlowDown", None, m()),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classify_service_error("GetObject", 400, "Weird", None, m()),
            StoreError::Internal(_)
        ));
    }

    #[tokio::test]
    async fn options_are_checked() {
        let err = S3Store::new(S3Options::default())
            .await
            .expect_err("no bucket");
        assert!(matches!(err, StoreError::InvalidArgument(_)));
        let small = S3Options {
            part_size_bytes: 1 << 20,
            ..S3Options::new("b")
        };
        assert!(S3Store::new(small).await.is_err());
        let half = S3Options {
            access_key_id: Some("k".into()),
            ..S3Options::new("b")
        };
        assert!(S3Store::new(half).await.is_err());
    }
}
