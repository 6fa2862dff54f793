//! Spool files: an upload written to local disk while it is hashed, then handed to a store as a
//! [`VerifiedFile`] only if its content matches the digest it claims.
//!
//! A `VerifiedFile` can only be made by [`Spool::finish`], which compares the SHA-256 and size of
//! what was written with the expected digest; so the type itself proves verification happened and
//! the verifying decorator need not hash the file a second time.

use std::path::{Path, PathBuf};

use std::io::Write;

use crate::digest::{Digest, DigestHasher};
use crate::error::StoreError;
use crate::store::ChunkStream;

/// A file being written and hashed.
///
/// Each chunk is hashed and written on tokio's blocking pool, without copying it, while the
/// caller's task goes on receiving the next one. The file and hasher travel with the chunk;
/// if a write is cancelled half-way they are lost and the spool refuses further use.
pub struct Spool {
    state: Option<(std::fs::File, DigestHasher)>,
    path: TempPath,
    len: u64,
}

impl Spool {
    /// Creates a new spool file with a unique name in `dir` (created if needed).
    pub async fn create(dir: &Path) -> Result<Spool, StoreError> {
        tokio::fs::create_dir_all(dir).await?;
        let path = dir.join(format!("spool-{}", uuid::Uuid::new_v4()));
        let guard = TempPath(Some(path.clone()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?
            .into_std()
            .await;
        Ok(Spool {
            state: Some((file, DigestHasher::new())),
            path: guard,
            len: 0,
        })
    }

    /// Appends and hashes one chunk (copies it; prefer [`Spool::write_owned`]).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.write_owned(chunk.to_vec()).await
    }

    /// Appends and hashes one chunk without copying it.
    pub async fn write_owned<B>(&mut self, chunk: B) -> Result<(), StoreError>
    where
        B: AsRef<[u8]> + Send + 'static,
    {
        let (mut file, mut hasher) = self.state.take().ok_or_else(interrupted)?;
        let n = chunk.as_ref().len() as u64;
        let (file, hasher, written) = tokio::task::spawn_blocking(move || {
            hasher.update(chunk.as_ref());
            let written = file.write_all(chunk.as_ref());
            (file, hasher, written)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("spool writer failed: {e}")))?;
        written?;
        self.state = Some((file, hasher));
        self.len += n;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Closes the file and checks it against `expected`.
    pub async fn finish(mut self, expected: &Digest) -> Result<VerifiedFile, StoreError> {
        let (file, hasher) = self.state.take().ok_or_else(interrupted)?;
        drop(file);
        let actual = hasher.finish();
        if actual != *expected {
            return Err(mismatch(expected, &actual));
        }
        Ok(VerifiedFile {
            path: self.path,
            digest: actual,
        })
    }
}

fn interrupted() -> StoreError {
    StoreError::Internal("spool unusable: an earlier write to it was interrupted".into())
}

/// The error for content that does not hash to the digest it was sent under.
pub fn mismatch(expected: &Digest, actual: &Digest) -> StoreError {
    StoreError::InvalidArgument(format!(
        "content does not match its digest: expected {expected}, got {actual}"
    ))
}

/// A local file whose SHA-256 and size equal `digest()`. Deleted on drop unless a store took it.
pub struct VerifiedFile {
    path: TempPath,
    digest: Digest,
}

impl VerifiedFile {
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn path(&self) -> &Path {
        self.path.0.as_deref().expect("path present until taken")
    }

    /// Hands the file over to a store that will move it into place; the caller now owns the
    /// file on disk (and must delete it if it cannot use it).
    pub fn take_path(mut self) -> PathBuf {
        self.path.0.take().expect("path present until taken")
    }

    /// Streams the file's content, deleting it once the stream is dropped.
    pub async fn into_stream(self) -> Result<ChunkStream, StoreError> {
        let file = tokio::fs::File::open(self.path()).await?;
        let reader = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let guard = self.path;
        Ok(Box::pin(futures::StreamExt::map(reader, move |r| {
            let _keep_until_done = &guard;
            r.map_err(StoreError::from)
        })))
    }
}

/// Deletes the file at its path on drop, unless the path was taken.
struct TempPath(Option<PathBuf>);

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spool_accepts_matching_content_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::create(dir.path()).await.unwrap();
        s.write(b"hello").await.unwrap();
        let f = s.finish(&Digest::of(b"hello")).await.unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), b"hello");
        let p = f.path().to_path_buf();
        drop(f);
        assert!(!p.exists(), "an unused verified file is deleted");

        let mut s = Spool::create(dir.path()).await.unwrap();
        s.write(b"hellO").await.unwrap();
        let err = s.finish(&Digest::of(b"hello")).await.err().unwrap();
        assert!(matches!(err, StoreError::InvalidArgument(_)));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left behind"
        );
    }
}
