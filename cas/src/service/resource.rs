//! Strict parsing of ByteStream resource names, as REAPI defines them:
//!
//! - reads: `{instance_name}/blobs/{hash}/{size}[/{metadata}]` and
//!   `{instance_name}/compressed-blobs/{compressor}/{hash}/{size}[/{metadata}]`;
//! - writes: `{instance_name}/uploads/{upload_id}/blobs/{hash}/{size}[/{metadata}]` and
//!   `{instance_name}/uploads/{upload_id}/compressed-blobs/{compressor}/{hash}/{size}[/…]`.
//!
//! `instance_name` may be empty or span several segments, but none of its segments may be a
//! reserved word ([`RESERVED`]); so the first reserved segment of a name ends its instance name.
//! Empty, `.` and `..` segments are refused anywhere, as are upper-case or short hashes, signed or
//! non-decimal sizes, explicit digest-function segments (SHA-256, the only function served here,
//! must be left implicit) and compressors other than `zstd` and `identity` (which means
//! "uncompressed"). Every refusal is a [`ResourceError`], which becomes `INVALID_ARGUMENT` naming
//! the problem and the resource name.

use std::fmt;

use crate::digest::{self, Digest};

/// Path segments REAPI reserves; none may appear in an instance name.
pub const RESERVED: [&str; 7] = [
    "blobs",
    "uploads",
    "compressed-blobs",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
];

/// Lower-case names of REAPI `DigestFunction` values, recognised only to refuse them clearly.
const DIGEST_FUNCTIONS: [&str; 9] = [
    "sha256",
    "sha1",
    "md5",
    "vso",
    "sha384",
    "sha512",
    "murmur3",
    "sha256tree",
    "blake3",
];

/// Longest stretch of a resource name quoted back in an error message.
const MAX_QUOTED: usize = 300;

/// How the bytes of a blob travel over ByteStream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compressor {
    /// A single zstd stream (one or more frames) of the blob's bytes.
    Zstd,
}

impl Compressor {
    /// The name used in resource names.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::Zstd => "zstd",
        }
    }
}

/// A parsed read resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResource {
    /// The instance name, segments joined by `/`; empty for the default instance.
    pub instance_name: String,
    /// The blob's (uncompressed) digest.
    pub digest: Digest,
    /// `None` for `blobs/…` and `compressed-blobs/identity/…`.
    pub compressor: Option<Compressor>,
}

/// A parsed upload resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResource {
    /// The instance name, segments joined by `/`; empty for the default instance.
    pub instance_name: String,
    /// The client-chosen upload id (usually a UUID; any non-empty segment is accepted).
    pub upload_id: String,
    /// The blob's (uncompressed) digest.
    pub digest: Digest,
    /// `None` for `blobs/…` and `compressed-blobs/identity/…`.
    pub compressor: Option<Compressor>,
}

/// Why a resource name was refused; converts to `INVALID_ARGUMENT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceError {
    problem: String,
    name: String,
}

impl ResourceError {
    fn new(name: &str, problem: impl Into<String>) -> Self {
        ResourceError {
            problem: problem.into(),
            name: quote(name),
        }
    }

    /// What is wrong, without the resource name.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid resource name {}: {}", self.name, self.problem)
    }
}

impl std::error::Error for ResourceError {}

impl From<ResourceError> for tonic::Status {
    fn from(e: ResourceError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// `name` in quotes, shortened if it is very long (error messages must stay small).
fn quote(name: &str) -> String {
    if name.len() <= MAX_QUOTED {
        return format!("{name:?}");
    }
    let mut end = MAX_QUOTED;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &name[..end], name.len())
}

/// Parses the resource name of a `Read`.
pub fn parse_read(name: &str) -> Result<ReadResource, ResourceError> {
    let segments = split(name)?;
    let (instance, rest) = split_instance(name, &segments)?;
    match rest.first().copied() {
        Some("blobs" | "compressed-blobs") => {
            let (digest, compressor) = parse_blob(name, rest)?;
            Ok(ReadResource {
                instance_name: instance,
                digest,
                compressor,
            })
        }
        Some("uploads") => Err(ResourceError::new(
            name,
            "an upload name cannot be read; expected {instance_name}/blobs/{hash}/{size}",
        )),
        _ => Err(not_blob(name, rest)),
    }
}

/// Parses the resource name of a `Write` or `QueryWriteStatus`.
pub fn parse_write(name: &str) -> Result<WriteResource, ResourceError> {
    let segments = split(name)?;
    let (instance, rest) = split_instance(name, &segments)?;
    match rest.first().copied() {
        Some("uploads") => {}
        Some("blobs" | "compressed-blobs") => {
            return Err(ResourceError::new(
                name,
                "missing uploads/{upload_id}/ before the blob part of an upload name",
            ))
        }
        _ => return Err(not_blob(name, rest)),
    }
    let upload_id = match rest.get(1).copied() {
        None => return Err(ResourceError::new(name, "missing upload id after uploads/")),
        Some(id) if RESERVED.contains(&id) => {
            return Err(ResourceError::new(
                name,
                format!("missing upload id after uploads/ (found reserved word {id:?})"),
            ))
        }
        Some(id) => id.to_string(),
    };
    let blob = &rest[2..];
    match blob.first().copied() {
        Some("blobs" | "compressed-blobs") => {}
        None => {
            return Err(ResourceError::new(
                name,
                "missing blobs/{hash}/{size} after the upload id",
            ))
        }
        Some(other) => {
            return Err(ResourceError::new(
                name,
                format!("expected blobs or compressed-blobs after the upload id, found {other:?}"),
            ))
        }
    }
    let (digest, compressor) = parse_blob(name, blob)?;
    Ok(WriteResource {
        instance_name: instance,
        upload_id,
        digest,
        compressor,
    })
}

/// Splits on `/`, refusing empty, `.` and `..` segments.
fn split(name: &str) -> Result<Vec<&str>, ResourceError> {
    if name.is_empty() {
        return Err(ResourceError::new(name, "the resource name is empty"));
    }
    let segments: Vec<&str> = name.split('/').collect();
    for (i, s) in segments.iter().enumerate() {
        match *s {
            "" => {
                return Err(ResourceError::new(
                    name,
                    format!("empty path segment at position {i} (leading, trailing or double '/')"),
                ))
            }
            "." | ".." => {
                return Err(ResourceError::new(
                    name,
                    format!("path segment {s:?} is not allowed"),
                ))
            }
            _ => {}
        }
    }
    Ok(segments)
}

/// Splits off the instance name: every segment before the first reserved word.
fn split_instance<'a, 'b>(
    name: &str,
    segments: &'b [&'a str],
) -> Result<(String, &'b [&'a str]), ResourceError> {
    let Some(at) = segments.iter().position(|s| RESERVED.contains(s)) else {
        return Err(ResourceError::new(
            name,
            "no blobs/, compressed-blobs/ or uploads/ part",
        ));
    };
    Ok((segments[..at].join("/"), &segments[at..]))
}

/// The error for a name whose first reserved segment does not start a blob or upload part.
fn not_blob(name: &str, rest: &[&str]) -> ResourceError {
    let found = rest.first().copied().unwrap_or_default();
    ResourceError::new(
        name,
        format!(
            "reserved word {found:?} cannot start a ByteStream resource \
             (nor appear in an instance name)"
        ),
    )
}

/// Parses `blobs/{hash}/{size}[/…]` or `compressed-blobs/{compressor}/{hash}/{size}[/…]`.
fn parse_blob(name: &str, rest: &[&str]) -> Result<(Digest, Option<Compressor>), ResourceError> {
    let (compressor, digest_parts) = if rest.first() == Some(&"compressed-blobs") {
        let compressor = match rest.get(1).copied() {
            None => {
                return Err(ResourceError::new(
                    name,
                    "missing compressor after compressed-blobs/",
                ))
            }
            Some("zstd") => Some(Compressor::Zstd),
            Some("identity") => None,
            Some(other) => {
                return Err(ResourceError::new(
                    name,
                    format!(
                        "unsupported compressor {:?} (supported: zstd, identity)",
                        shorten(other)
                    ),
                ))
            }
        };
        (compressor, &rest[2..])
    } else {
        (None, &rest[1..])
    };
    let Some(&hash) = digest_parts.first() else {
        return Err(ResourceError::new(name, "missing hash and size"));
    };
    if DIGEST_FUNCTIONS.contains(&hash) {
        return Err(ResourceError::new(
            name,
            format!(
                "digest function segment {hash:?} is not supported: this server uses SHA-256 \
                 only, whose name must be omitted"
            ),
        ));
    }
    let Some(&size) = digest_parts.get(1) else {
        return Err(ResourceError::new(name, "missing size after the hash"));
    };
    let size = digest::parse_size(size).map_err(|e| ResourceError::new(name, e.to_string()))?;
    let size = i64::try_from(size).map_err(|_| ResourceError::new(name, "size is too large"))?;
    let digest = Digest::parse(hash, size).map_err(|e| ResourceError::new(name, e.to_string()))?;
    // Anything after the size is optional metadata, which this server ignores.
    Ok((digest, compressor))
}

/// A segment quoted back in a message, cut short if long.
fn shorten(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> String {
        Digest::of(b"abc").hash_hex()
    }

    fn abc() -> Digest {
        Digest::of(b"abc")
    }

    fn read_err(name: &str) -> String {
        parse_read(name).unwrap_err().to_string()
    }

    fn write_err(name: &str) -> String {
        parse_write(name).unwrap_err().to_string()
    }

    #[test]
    fn reads_with_and_without_instance_and_metadata() {
        let h = hash();
        for (name, instance) in [
            (format!("blobs/{h}/3"), ""),
            (format!("main/blobs/{h}/3"), "main"),
            (format!("a/b/c/blobs/{h}/3"), "a/b/c"),
            (format!("a/b/blobs/{h}/3/some/metadata"), "a/b"),
            (format!("blobs/{h}/3/blobs/uploads"), ""),
        ] {
            let r = parse_read(&name).unwrap();
            assert_eq!(r.instance_name, instance, "{name}");
            assert_eq!(r.digest, abc());
            assert_eq!(r.compressor, None);
        }
    }

    #[test]
    fn compressed_reads() {
        let h = hash();
        let r = parse_read(&format!("i/compressed-blobs/zstd/{h}/3")).unwrap();
        assert_eq!(r.compressor, Some(Compressor::Zstd));
        assert_eq!(r.instance_name, "i");
        assert_eq!(r.digest, abc());
        let r = parse_read(&format!("compressed-blobs/identity/{h}/3/x")).unwrap();
        assert_eq!(r.compressor, None);
        assert_eq!(r.instance_name, "");
    }

    #[test]
    fn writes() {
        let h = hash();
        let w = parse_write(&format!("uploads/123e4567-e89b/blobs/{h}/3")).unwrap();
        assert_eq!(w.instance_name, "");
        assert_eq!(w.upload_id, "123e4567-e89b");
        assert_eq!(w.digest, abc());
        assert_eq!(w.compressor, None);
        let w = parse_write(&format!("x/y/uploads/u/compressed-blobs/zstd/{h}/3/meta")).unwrap();
        assert_eq!(w.instance_name, "x/y");
        assert_eq!(w.upload_id, "u");
        assert_eq!(w.compressor, Some(Compressor::Zstd));
        let w = parse_write(&format!("uploads/u/compressed-blobs/identity/{h}/3")).unwrap();
        assert_eq!(w.compressor, None);
        let empty = parse_write(&format!("uploads/u/blobs/{}/0", Digest::EMPTY.hash_hex()));
        assert_eq!(empty.unwrap().digest, Digest::EMPTY);
    }

    #[test]
    fn refuses_dot_and_empty_segments_everywhere() {
        let h = hash();
        for name in [
            format!("../blobs/{h}/3"),
            format!("a/../blobs/{h}/3"),
            format!("./blobs/{h}/3"),
            format!("/blobs/{h}/3"),
            format!("a//blobs/{h}/3"),
            format!("blobs/{h}/3/"),
            format!("blobs/{h}/3/.."),
            format!("blobs/{h}//3"),
            String::new(),
        ] {
            let e = parse_read(&name).unwrap_err();
            assert!(
                e.problem().contains("segment") || e.problem().contains("empty"),
                "{name}: {e}"
            );
            assert!(parse_write(&name.replace("blobs/", "uploads/u/blobs/")).is_err());
        }
        assert!(write_err(&format!("uploads/../blobs/{h}/3")).contains("\"..\""));
        assert!(write_err(&format!("uploads//blobs/{h}/3")).contains("empty path segment"));
    }

    #[test]
    fn refuses_missing_parts() {
        let h = hash();
        assert!(read_err("blobs").contains("missing hash and size"));
        assert!(read_err(&format!("blobs/{h}")).contains("missing size"));
        assert!(read_err("compressed-blobs").contains("missing compressor"));
        assert!(read_err("compressed-blobs/zstd").contains("missing hash"));
        assert!(read_err(&format!("compressed-blobs/zstd/{h}")).contains("missing size"));
        assert!(read_err("instance/only").contains("no blobs/"));
        assert!(write_err("uploads").contains("missing upload id"));
        assert!(write_err(&format!("uploads/blobs/{h}/3")).contains("missing upload id"));
        assert!(write_err("uploads/u").contains("missing blobs/"));
        assert!(write_err(&format!("uploads/u/{h}/3")).contains("expected blobs"));
        assert!(write_err("uploads/u/blobs").contains("missing hash"));
        assert!(write_err(&format!("uploads/u/blobs/{h}")).contains("missing size"));
    }

    #[test]
    fn refuses_bad_digests() {
        let h = hash();
        let upper = h.to_uppercase();
        assert!(read_err(&format!("blobs/{upper}/3")).contains("64 lowercase hex"));
        assert!(read_err(&format!("blobs/{}/3", &h[..63])).contains("64 lowercase hex"));
        assert!(read_err(&format!("blobs/{h}0/3")).contains("64 lowercase hex"));
        assert!(read_err(&format!("blobs/{h}/-3")).contains("not a decimal number"));
        assert!(read_err(&format!("blobs/{h}/+3")).contains("not a decimal number"));
        assert!(read_err(&format!("blobs/{h}/3x")).contains("not a decimal number"));
        assert!(read_err(&format!("blobs/{h}/99999999999999999999")).contains("decimal"));
        assert!(write_err(&format!("uploads/u/blobs/{upper}/3")).contains("64 lowercase hex"));
        assert!(write_err(&format!("uploads/u/blobs/{h}/-1")).contains("not a decimal"));
        // An explicit digest-function segment is refused with a clear message.
        assert!(read_err(&format!("blobs/blake3/{h}/3")).contains("digest function"));
        assert!(read_err(&format!("blobs/sha256/{h}/3")).contains("digest function"));
    }

    #[test]
    fn refuses_reserved_words_in_the_wrong_place() {
        let h = hash();
        // A reserved first segment that does not start a blob part, or one inside an instance.
        for name in [
            format!("actions/blobs/{h}/3"),
            format!("main/actionResults/blobs/{h}/3"),
            format!("operations/x/blobs/{h}/3"),
            format!("capabilities/blobs/{h}/3"),
        ] {
            assert!(read_err(&name).contains("reserved word"), "{name}");
            let w = name.replace("blobs/", "uploads/u/blobs/");
            assert!(write_err(&w).contains("reserved word"), "{w}");
        }
        // `uploads` is reserved too: an instance cannot contain it, and reads of upload names
        // are refused.
        assert!(read_err(&format!("uploads/u/blobs/{h}/3")).contains("upload name"));
        assert!(write_err(&format!("blobs/{h}/3")).contains("missing uploads/"));
    }

    #[test]
    fn refuses_unsupported_compressors() {
        let h = hash();
        for c in ["deflate", "brotli", "foo", "ZSTD", "gzip"] {
            let e = read_err(&format!("compressed-blobs/{c}/{h}/3"));
            assert!(e.contains("unsupported compressor"), "{e}");
            let e = write_err(&format!("uploads/u/compressed-blobs/{c}/{h}/3"));
            assert!(e.contains("unsupported compressor"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_resource_and_map_to_invalid_argument() {
        let name = format!("blobs/{}/x", hash());
        let e = parse_read(&name).unwrap_err();
        assert!(e.to_string().contains(&name));
        let status = tonic::Status::from(e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(&name));
        // Very long names are cut short in messages.
        let long = format!("{}/blobs/x/1", "a".repeat(10_000));
        let msg = read_err(&long);
        assert!(msg.len() < 1_000, "{}", msg.len());
        assert!(msg.contains(&format!("({} bytes)", long.len())), "{msg}");
    }
}
