//! Typed description of a storage stack: which backends, which decorators, how they nest.
//!
//! Binaries read it from TOML (see README.md for one example per backend) and call [`build`];
//! the library never reads files or flags itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::error::StoreError;
use crate::redact::{Secret, SecretUrl};
use crate::store::filesystem::{FilesystemOptions, FilesystemStore};
use crate::store::memory::MemoryStore;
use crate::store::size_partitioned::SizePartitionedStore;
use crate::store::tiered::TieredStore;
use crate::store::verifying::VerifyingStore;
use crate::store::BlobStore;

/// One node of a store stack. Its `Debug` hides the S3 secret key and Redis passwords.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// In memory, LRU-evicted under `max_bytes`.
    Memory { max_bytes: ByteSize },
    /// On local disk under `root`, LRU-evicted under `max_bytes`; survives restarts.
    Filesystem {
        root: PathBuf,
        max_bytes: ByteSize,
        /// Delete blobs whose content does not match their digest at open (after a crash, those
        /// written since the last checkpoint). Defaults to true in a CAS stack and false in an
        /// action-cache stack, whose values are not content-addressed.
        #[serde(default)]
        verify_on_recovery: Option<bool>,
        /// Write large uploads and read large blobs with direct I/O rather than through newly
        /// allocated page-cache pages (see [`crate::direct_io`]). Defaults to true.
        #[serde(default)]
        direct_io: Option<bool>,
    },
    /// In Redis (small blobs, action results); refuses blobs over `max_blob_bytes`.
    Redis {
        url: SecretUrl,
        #[serde(default)]
        key_prefix: String,
        #[serde(default = "default_redis_cap")]
        max_blob_bytes: ByteSize,
    },
    /// In an S3 bucket (any S3-compatible server with `endpoint`).
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: String,
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default = "default_region")]
        region: String,
        /// Static credentials; when absent the AWS default chain (environment, profile) is used.
        #[serde(default)]
        access_key_id: Option<String>,
        #[serde(default)]
        secret_access_key: Option<Secret>,
        #[serde(default = "yes")]
        force_path_style: bool,
        #[serde(default = "default_part_size")]
        part_size: ByteSize,
        #[serde(default = "default_s3_concurrency")]
        max_concurrency: usize,
    },
    /// Reads from `fast`, falling back to `slow` and populating `fast`; writes to both.
    Tiered {
        fast: Box<StoreConfig>,
        slow: Box<StoreConfig>,
    },
    /// Blobs smaller than `threshold` go to `small`, the rest to `large`.
    SizePartitioned {
        threshold: ByteSize,
        small: Box<StoreConfig>,
        large: Box<StoreConfig>,
    },
    /// Hashes every write and refuses content that does not match its digest. (The storage
    /// services always add one on top of the CAS; use this to guard an inner layer too.)
    Verifying { inner: Box<StoreConfig> },
}

fn default_redis_cap() -> ByteSize {
    ByteSize::mib(64)
}
fn default_region() -> String {
    "us-east-1".into()
}
fn yes() -> bool {
    true
}
fn default_part_size() -> ByteSize {
    ByteSize::mib(16)
}
fn default_s3_concurrency() -> usize {
    128
}

impl StoreConfig {
    /// The root of the first filesystem store in this stack, depth first, fast tiers first:
    /// where upload spool files should live so a finished upload is a rename.
    pub fn first_filesystem_root(&self) -> Option<&Path> {
        match self {
            StoreConfig::Filesystem { root, .. } => Some(root),
            StoreConfig::Tiered { fast, slow } => fast
                .first_filesystem_root()
                .or_else(|| slow.first_filesystem_root()),
            StoreConfig::SizePartitioned { small, large, .. } => large
                .first_filesystem_root()
                .or_else(|| small.first_filesystem_root()),
            StoreConfig::Verifying { inner } => inner.first_filesystem_root(),
            _ => None,
        }
    }
}

/// Why a configuration cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Two filesystem stores would use the same directory, or one inside the other: each would
    /// index, evict and (after a crash) delete the other's files as its own.
    #[error("{0}")]
    SharedRoot(Box<SharedRoot>),
    #[error("cannot resolve the filesystem store root {}: {source}", root.display())]
    Resolve {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Two filesystem stores of a configuration whose roots overlap.
#[derive(Debug)]
pub struct SharedRoot {
    /// Where the first store sits, e.g. "the cas stack's store `cas.fast`".
    pub first: String,
    /// Its root as configured, and resolved.
    pub first_root: PathBuf,
    pub first_canonical: PathBuf,
    pub second: String,
    pub second_root: PathBuf,
    pub second_canonical: PathBuf,
}

impl std::fmt::Display for SharedRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "two filesystem stores share a directory: {} has root {} and {} has root {}{}; give \
             every filesystem store a root of its own, outside the others' (e.g. \
             /var/cache/farm/cas and /var/cache/farm/ac)",
            self.first,
            self.first_root.display(),
            self.second,
            self.second_root.display(),
            overlap_note(&self.first_canonical, &self.second_canonical)
        )
    }
}

/// Says how two overlapping canonical roots relate, when that is not plain from the roots as
/// written.
fn overlap_note(a: &Path, b: &Path) -> String {
    let how = if a == b {
        format!("both are {}", a.display())
    } else if b.starts_with(a) {
        format!("{} is inside {}", b.display(), a.display())
    } else {
        format!("{} is inside {}", a.display(), b.display())
    };
    format!(" ({how})")
}

impl StoreConfig {
    /// Every filesystem store of this stack with its place in the configuration, written as
    /// the TOML path to its table (`cas`, `cas.fast`, `cas.large.slow`, ...).
    pub fn filesystem_roots(&self, path: &str) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        self.collect_roots(path, &mut out);
        out
    }

    fn collect_roots(&self, path: &str, out: &mut Vec<(String, PathBuf)>) {
        match self {
            StoreConfig::Filesystem { root, .. } => out.push((path.to_string(), root.clone())),
            StoreConfig::Tiered { fast, slow } => {
                fast.collect_roots(&format!("{path}.fast"), out);
                slow.collect_roots(&format!("{path}.slow"), out);
            }
            StoreConfig::SizePartitioned { small, large, .. } => {
                small.collect_roots(&format!("{path}.small"), out);
                large.collect_roots(&format!("{path}.large"), out);
            }
            StoreConfig::Verifying { inner } => inner.collect_roots(&format!("{path}.inner"), out),
            StoreConfig::Memory { .. } | StoreConfig::Redis { .. } | StoreConfig::S3 { .. } => {}
        }
    }
}

/// Refuses stacks in which two filesystem stores (of one stack or of different ones) would
/// share a directory: the same root, or one root inside another, compared after resolving
/// symlinks, `.` and `..` (roots that do not exist yet are resolved through their nearest
/// existing ancestor). `stacks` names each stack as its TOML table (`cas`, `action_cache`).
/// Reads the filesystem but creates nothing. Blocking.
pub fn check_distinct_roots(stacks: &[(&str, &StoreConfig)]) -> Result<(), ConfigError> {
    let mut roots = Vec::new();
    for (name, config) in stacks {
        for (path, root) in config.filesystem_roots(name) {
            let canonical = resolve(&root).map_err(|source| ConfigError::Resolve {
                root: root.clone(),
                source,
            })?;
            let stack = path.split('.').next().unwrap_or(&path).to_string();
            roots.push((
                format!("the {stack} stack's store `{path}`"),
                root,
                canonical,
            ));
        }
    }
    for (i, (first, first_root, a)) in roots.iter().enumerate() {
        for (second, second_root, b) in &roots[i + 1..] {
            if a.starts_with(b) || b.starts_with(a) {
                return Err(ConfigError::SharedRoot(Box::new(SharedRoot {
                    first: first.clone(),
                    first_root: first_root.clone(),
                    first_canonical: a.clone(),
                    second: second.clone(),
                    second_root: second_root.clone(),
                    second_canonical: b.clone(),
                })));
            }
        }
    }
    Ok(())
}

/// `path` made absolute with symlinks, `.` and `..` resolved, even if it does not exist (yet):
/// its nearest existing ancestor is canonicalized and the rest is appended, `..` and `.`
/// applied lexically.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let absolute = std::path::absolute(path)?;
    let parts: Vec<Component> = absolute.components().collect();
    for existing in (1..=parts.len()).rev() {
        let prefix: PathBuf = parts[..existing].iter().collect();
        let mut base = match prefix.canonicalize() {
            Ok(base) => base,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for part in &parts[existing..] {
            match part {
                Component::ParentDir => {
                    base.pop();
                }
                Component::Normal(name) => base.push(name),
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        return Ok(base);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no part of the path exists",
    ))
}

impl StoreConfig {
    /// Whether uploads spooled next to [`Self::first_filesystem_root`] use direct I/O: that
    /// store's `direct_io` (true without a filesystem store).
    pub fn spool_direct_io(&self) -> bool {
        match self {
            StoreConfig::Filesystem { direct_io, .. } => direct_io.unwrap_or(true),
            StoreConfig::Tiered { fast, slow } => match fast.first_filesystem_root() {
                Some(_) => fast.spool_direct_io(),
                None => slow.spool_direct_io(),
            },
            StoreConfig::SizePartitioned { small, large, .. } => {
                match large.first_filesystem_root() {
                    Some(_) => large.spool_direct_io(),
                    None => small.spool_direct_io(),
                }
            }
            StoreConfig::Verifying { inner } => inner.spool_direct_io(),
            _ => true,
        }
    }
}

/// What a stack stores, which decides defaults that depend on whether keys are content digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Cas,
    ActionCache,
}

/// Opens every backend of a CAS stack and composes the decorators.
pub fn build(
    config: &StoreConfig,
) -> futures::future::BoxFuture<'_, Result<Arc<dyn BlobStore>, StoreError>> {
    build_as(config, Role::Cas)
}

/// Opens every backend of an action-cache stack (values are not content-addressed) and
/// composes the decorators.
pub fn build_action_cache(
    config: &StoreConfig,
) -> futures::future::BoxFuture<'_, Result<Arc<dyn BlobStore>, StoreError>> {
    build_as(config, Role::ActionCache)
}

fn build_as(
    config: &StoreConfig,
    role: Role,
) -> futures::future::BoxFuture<'_, Result<Arc<dyn BlobStore>, StoreError>> {
    let build = move |config| build_as(config, role);
    Box::pin(async move {
        let store: Arc<dyn BlobStore> = match config {
            StoreConfig::Memory { max_bytes } => Arc::new(MemoryStore::new(max_bytes.as_u64())),
            StoreConfig::Filesystem {
                root,
                max_bytes,
                verify_on_recovery,
                direct_io,
            } => {
                let mut options = FilesystemOptions::new(max_bytes.as_u64());
                options.verify_on_recovery = verify_on_recovery.unwrap_or(role == Role::Cas);
                options.direct_io = direct_io.unwrap_or(true);
                Arc::new(FilesystemStore::open_with(root.clone(), options).await?)
            }
            #[cfg(feature = "redis")]
            StoreConfig::Redis {
                url,
                key_prefix,
                max_blob_bytes,
            } => Arc::new(
                crate::store::redis::RedisStore::connect(
                    &url.0,
                    key_prefix.clone(),
                    max_blob_bytes.as_u64(),
                )
                .await?,
            ),
            #[cfg(not(feature = "redis"))]
            StoreConfig::Redis { .. } => return Err(not_built_in("redis")),
            #[cfg(feature = "s3")]
            StoreConfig::S3 {
                bucket,
                prefix,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                force_path_style,
                part_size,
                max_concurrency,
            } => Arc::new(
                crate::store::s3::S3Store::new(crate::store::s3::S3Options {
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    endpoint: endpoint.clone(),
                    region: region.clone(),
                    access_key_id: access_key_id.clone(),
                    secret_access_key: secret_access_key.as_ref().map(|s| s.0.clone()),
                    force_path_style: *force_path_style,
                    part_size_bytes: part_size.as_u64(),
                    max_concurrency: *max_concurrency,
                })
                .await?,
            ),
            #[cfg(not(feature = "s3"))]
            StoreConfig::S3 { .. } => return Err(not_built_in("s3")),
            StoreConfig::Tiered { fast, slow } => {
                Arc::new(TieredStore::new(build(fast).await?, build(slow).await?))
            }
            StoreConfig::SizePartitioned {
                threshold,
                small,
                large,
            } => Arc::new(SizePartitionedStore::new(
                threshold.as_u64(),
                build(small).await?,
                build(large).await?,
            )),
            StoreConfig::Verifying { inner } => Arc::new(VerifyingStore::new(build(inner).await?)),
        };
        Ok(store)
    })
}

#[allow(dead_code)]
fn not_built_in(feature: &str) -> StoreError {
    StoreError::FailedPrecondition(format!(
        "this binary was built without the `{feature}` store (cargo feature `{feature}`)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_nested_stack_with_human_sizes() {
        let cfg: StoreConfig = toml::from_str(
            r#"
            kind = "size_partitioned"
            threshold = "1 MiB"
            [small]
            kind = "memory"
            max_bytes = "512 MiB"
            [large]
            kind = "tiered"
            fast = { kind = "filesystem", root = "/var/cache/farm", max_bytes = "10 GiB" }
            slow = { kind = "s3", bucket = "farm", endpoint = "http://127.0.0.1:9000" }
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.first_filesystem_root(),
            Some(Path::new("/var/cache/farm"))
        );
        let StoreConfig::SizePartitioned { threshold, .. } = cfg else {
            panic!("wrong variant")
        };
        assert_eq!(threshold.as_u64(), 1 << 20);
    }

    #[test]
    fn the_spool_follows_the_filesystem_store_it_renames_into() {
        let parse = |text: &str| toml::from_str::<StoreConfig>(text).unwrap();
        let plain = parse("kind = \"filesystem\"\nroot = \"/c\"\nmax_bytes = \"1 GiB\"");
        assert!(plain.spool_direct_io(), "direct I/O is the default");
        let off = parse(
            r#"
            kind = "tiered"
            fast = { kind = "memory", max_bytes = "1 GiB" }
            slow = { kind = "filesystem", root = "/c", max_bytes = "1 GiB", direct_io = false }
            "#,
        );
        assert!(!off.spool_direct_io());
        let large_on = parse(
            r#"
            kind = "size_partitioned"
            threshold = "1 MiB"
            small = { kind = "filesystem", root = "/s", max_bytes = "1 GiB", direct_io = false }
            large = { kind = "filesystem", root = "/l", max_bytes = "1 GiB" }
            "#,
        );
        assert!(
            large_on.spool_direct_io(),
            "spools go next to the large side"
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let cfg: StoreConfig = toml::from_str(
            r#"
            kind = "tiered"
            fast = { kind = "redis", url = "redis://farm:hunter2@127.0.0.1:6379" }
            slow = { kind = "s3", bucket = "b", access_key_id = "AKID", secret_access_key = "wJalrXUtnFEMI" }
            "#,
        )
        .unwrap();
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("wJalrXUtnFEMI"),
            "{shown}"
        );
        assert!(shown.contains("redis://farm:***@127.0.0.1:6379"), "{shown}");
    }

    fn fs(root: &Path) -> StoreConfig {
        StoreConfig::Filesystem {
            root: root.to_path_buf(),
            max_bytes: ByteSize::mib(1),
            verify_on_recovery: None,
            direct_io: None,
        }
    }

    #[test]
    fn filesystem_roots_must_not_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("real")).unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        let check = |cas: StoreConfig, ac: StoreConfig| {
            check_distinct_roots(&[("cas", &cas), ("action_cache", &ac)])
        };
        // Fine: siblings, even when one name is a prefix of the other's.
        check(fs(&d.join("cas")), fs(&d.join("cas2"))).unwrap();
        check(
            fs(&d.join("cas")),
            StoreConfig::Memory {
                max_bytes: ByteSize::mib(1),
            },
        )
        .unwrap();
        for (cas, ac, shown) in [
            (d.join("x"), d.join("x"), "both are"),
            (d.join("x"), d.join("x/ac"), "is inside"),
            (d.join("x/new/.."), d.join("x"), "both are"),
            (d.join("link/cas"), d.join("real"), "is inside"),
        ] {
            let e = check(fs(&cas), fs(&ac)).unwrap_err().to_string();
            assert!(
                e.contains("the cas stack's store `cas`")
                    && e.contains("the action_cache stack's store `action_cache`")
                    && e.contains(&cas.display().to_string())
                    && e.contains(&ac.display().to_string())
                    && e.contains(shown),
                "{e}"
            );
        }
        let tiered = StoreConfig::Tiered {
            fast: Box::new(fs(&d.join("t"))),
            slow: Box::new(StoreConfig::Verifying {
                inner: Box::new(fs(&d.join("t/slow"))),
            }),
        };
        let e = check(tiered, fs(&d.join("ac"))).unwrap_err().to_string();
        assert!(
            e.contains("`cas.fast`") && e.contains("`cas.slow.inner`"),
            "{e}"
        );
        assert!(!d.join("x").exists(), "checking creates nothing");
    }

    #[test]
    fn refuses_unknown_kinds_and_fields() {
        let e = toml::from_str::<StoreConfig>("kind = \"floppy\"").unwrap_err();
        assert!(e.to_string().contains("floppy"), "{e}");
        let e = toml::from_str::<StoreConfig>("kind = \"memory\"\nmax_bytes = 1\ncolour = 2")
            .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
