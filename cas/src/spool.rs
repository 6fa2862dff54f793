//! Spool files: an upload written to local disk while it is hashed, then handed to a store as a
//! [`VerifiedFile`] only if its content matches the digest it claims.
//!
//! A `VerifiedFile` can only be made by [`Spool::finish`], which compares the SHA-256 and size of
//! what was written with the expected digest; so the type itself proves verification happened and
//! the verifying decorator need not hash the file a second time.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::digest::{Digest, DigestHasher};
use crate::direct_io::{self, Block, ALIGN, BLOCK};
use crate::error::StoreError;
use crate::store::ChunkStream;

/// A file being written and hashed.
///
/// Each chunk is hashed on tokio's blocking pool, without copying it, while the caller's task
/// goes on receiving the next one. Small uploads are written through the page cache by the same
/// blocking call. Large ones ([`Spool::create_for`], at least
/// [`MIN_DIRECT_BYTES`](direct_io::MIN_DIRECT_BYTES)) are copied into aligned blocks as they are
/// hashed, and each full block is written with `O_DIRECT` by a blocking call of its own, so
/// hashing the next chunk and writing the last block run on two cores at once (see
/// [`direct_io`] for why not through the page cache). The file and hasher travel with the
/// chunk; if a write is cancelled half-way they are lost and the spool refuses further use.
pub struct Spool {
    state: Option<State>,
    path: TempPath,
    len: u64,
}

struct State {
    hasher: DigestHasher,
    sink: Sink,
}

enum Sink {
    Buffered(File),
    Direct(DirectSink),
}

/// The direct-I/O side of a spool.
struct DirectSink {
    file: Arc<File>,
    /// Received bytes not written yet: `fill.block[..fill.len]`, starting at file offset
    /// `offset` (a multiple of [`ALIGN`]).
    fill: Fill,
    offset: u64,
    /// The blocks being written (at most [`WRITES_IN_FLIGHT`]), oldest first.
    writing: VecDeque<JoinHandle<std::io::Result<Block>>>,
    /// Bytes of the file allocated so far, and the most it will need (the expected size,
    /// aligned).
    allocated: u64,
    expected: u64,
}

/// Disk allocated ahead of the data of a direct spool. Writes inside the allocated size run
/// concurrently on ext4 (writes that extend a file go one at a time), and a full disk shows
/// within this much of the data; allocating the whole expected size at once would let a client
/// that names a huge blob and sends little reserve all of that disk while its upload sits idle.
const PREALLOCATE_AHEAD: u64 = 64 << 20;

/// Direct writes of one spool in flight at once: two keep the disk busy while the next block
/// is handed over (measured 1.7–1.9 GB/s against 1.25–1.4 GB/s one at a time).
const WRITES_IN_FLIGHT: usize = 2;

/// The block being filled, or (parked between streams) just its bytes.
enum Fill {
    Block { block: Block, len: usize },
    Parked(Vec<u8>),
}

impl Fill {
    /// The block, with any parked bytes copied into a fresh one.
    fn into_block(self) -> (Block, usize) {
        match self {
            Fill::Block { block, len } => (block, len),
            Fill::Parked(bytes) => {
                let mut block = Block::take();
                block.window_mut()[..bytes.len()].copy_from_slice(&bytes);
                (block, bytes.len())
            }
        }
    }
}

impl Spool {
    /// Creates a new spool file with a unique name in `dir` (created if needed), written
    /// through the page cache.
    pub async fn create(dir: &Path) -> Result<Spool, StoreError> {
        Self::create_for(dir, 0, false).await
    }

    /// Creates a new spool file in `dir` for an upload of `expected` bytes: with direct I/O if
    /// `direct` allows it, the upload is large enough and the filesystem supports it.
    pub async fn create_for(dir: &Path, expected: u64, direct: bool) -> Result<Spool, StoreError> {
        tokio::fs::create_dir_all(dir).await?;
        let path = dir.join(format!("spool-{}", uuid::Uuid::new_v4()));
        let guard = TempPath(Some(path.clone()));
        let direct = direct && expected >= direct_io::MIN_DIRECT_BYTES;
        let sink = tokio::task::spawn_blocking(move || -> std::io::Result<Sink> {
            if direct {
                if let Some(file) = direct_io::create_direct(&path)? {
                    let expected = expected.next_multiple_of(ALIGN as u64);
                    let allocated = expected.min(PREALLOCATE_AHEAD);
                    direct_io::preallocate(&file, allocated)?;
                    return Ok(Sink::Direct(DirectSink {
                        file: Arc::new(file),
                        fill: Fill::Parked(Vec::new()),
                        offset: 0,
                        writing: VecDeque::new(),
                        allocated,
                        expected,
                    }));
                }
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            Ok(Sink::Buffered(file))
        })
        .await
        .map_err(join_error)??;
        Ok(Spool {
            state: Some(State {
                hasher: DigestHasher::new(),
                sink,
            }),
            path: guard,
            len: 0,
        })
    }

    /// Whether this spool writes with direct I/O.
    pub fn is_direct(&self) -> bool {
        matches!(
            self.state,
            Some(State {
                sink: Sink::Direct(_),
                ..
            })
        )
    }

    /// Appends and hashes one chunk (copies it; prefer [`Spool::write_owned`]).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.write_owned(chunk.to_vec()).await
    }

    /// Appends and hashes one chunk without copying it (direct spools copy it into their
    /// aligned block while hashing it).
    pub async fn write_owned<B>(&mut self, chunk: B) -> Result<(), StoreError>
    where
        B: AsRef<[u8]> + Send + Sync + 'static,
    {
        self.write_all_owned(vec![chunk]).await
    }

    /// Appends and hashes several chunks, in order, with one hop to the blocking pool.
    pub async fn write_all_owned<B>(&mut self, chunks: Vec<B>) -> Result<(), StoreError>
    where
        B: AsRef<[u8]> + Send + Sync + 'static,
    {
        let State { mut hasher, sink } = self.state.take().ok_or_else(interrupted)?;
        let n: u64 = chunks.iter().map(|c| c.as_ref().len() as u64).sum();
        let sink = match sink {
            Sink::Buffered(mut file) => {
                let (file, hasher_back, written) = tokio::task::spawn_blocking(move || {
                    let mut written = Ok(());
                    for chunk in &chunks {
                        hasher.update(chunk.as_ref());
                        written = file.write_all(chunk.as_ref());
                        if written.is_err() {
                            break;
                        }
                    }
                    (file, hasher, written)
                })
                .await
                .map_err(join_error)?;
                written?;
                hasher = hasher_back;
                Sink::Buffered(file)
            }
            Sink::Direct(sink) => {
                let (sink, hasher_back) = sink.append(hasher, chunks).await?;
                hasher = hasher_back;
                Sink::Direct(sink)
            }
        };
        self.state = Some(State { hasher, sink });
        self.len += n;
        Ok(())
    }

    /// Between streams of a resumable upload: writes what can be written of a direct spool's
    /// block and keeps only the unaligned rest in memory, so an idle upload holds kilobytes,
    /// not a block.
    pub async fn park(&mut self) -> Result<(), StoreError> {
        if !self.is_direct() {
            return Ok(());
        }
        let Some(State {
            hasher,
            sink: Sink::Direct(sink),
        }) = self.state.take()
        else {
            return Err(interrupted());
        };
        let sink = sink.park().await?;
        self.state = Some(State {
            hasher,
            sink: Sink::Direct(sink),
        });
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
        let State { hasher, sink } = self.state.take().ok_or_else(interrupted)?;
        match sink {
            Sink::Buffered(file) => drop(file),
            Sink::Direct(sink) => sink.finish(self.len).await?,
        }
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

impl DirectSink {
    /// Hashes `chunks` and copies them into the block being filled, in one pass on the
    /// blocking pool (piece by piece, so each piece is hashed while the copy has it in the
    /// cache), then starts writing each block that filled up, [`WRITES_IN_FLIGHT`] at a time.
    async fn append<B>(
        mut self,
        mut hasher: DigestHasher,
        chunks: Vec<B>,
    ) -> Result<(Self, DigestHasher), StoreError>
    where
        B: AsRef<[u8]> + Send + Sync + 'static,
    {
        /// Bytes copied, then hashed, at a time: well inside the L1/L2 caches.
        const PIECE: usize = 32 * 1024;
        let fill = std::mem::replace(&mut self.fill, Fill::Parked(Vec::new()));
        let (hasher_back, block, len, full) = tokio::task::spawn_blocking(move || {
            let (mut block, mut len) = fill.into_block();
            let mut full = Vec::new();
            for chunk in &chunks {
                let mut rest = chunk.as_ref();
                while !rest.is_empty() {
                    let n = rest.len().min(BLOCK - len).min(PIECE);
                    let piece = &mut block.window_mut()[len..len + n];
                    piece.copy_from_slice(&rest[..n]);
                    hasher.update(piece);
                    len += n;
                    rest = &rest[n..];
                    if len == BLOCK {
                        full.push(std::mem::replace(&mut block, Block::take()));
                        len = 0;
                    }
                }
            }
            (hasher, block, len, full)
        })
        .await
        .map_err(join_error)?;
        self.fill = Fill::Block { block, len };
        for block in full {
            self.start_write(block, BLOCK).await?;
        }
        Ok((self, hasher_back))
    }

    /// Waits until fewer than [`WRITES_IN_FLIGHT`] writes are in flight, then starts writing
    /// `block[..len]` at the current offset.
    async fn start_write(&mut self, block: Block, len: usize) -> Result<(), StoreError> {
        while self.writing.len() >= WRITES_IN_FLIGHT {
            self.wait_oldest().await?;
        }
        let end = self.offset + len as u64;
        if end > self.allocated {
            // Never less than the write itself (an overlong upload is refused before it gets
            // here, but the file must hold whatever is written).
            let upto = end.max(self.expected.min(end + PREALLOCATE_AHEAD));
            let file = Arc::clone(&self.file);
            tokio::task::spawn_blocking(move || direct_io::preallocate(&file, upto))
                .await
                .map_err(join_error)??;
            self.allocated = upto;
        }
        let file = Arc::clone(&self.file);
        let offset = self.offset;
        self.offset = end;
        self.writing.push_back(tokio::task::spawn_blocking(move || {
            direct_io::write_block(&file, &block, len, offset).map(|()| block)
        }));
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), StoreError> {
        if let Some(writing) = self.writing.pop_front() {
            writing.await.map_err(join_error)??;
        }
        Ok(())
    }

    /// Waits for every write in flight.
    async fn wait(&mut self) -> Result<(), StoreError> {
        while !self.writing.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    /// Writes the aligned part of the filled bytes and keeps the rest as parked bytes.
    async fn park(mut self) -> Result<Self, StoreError> {
        let fill = std::mem::replace(&mut self.fill, Fill::Parked(Vec::new()));
        let (block, len) = fill.into_block();
        let aligned = len - len % ALIGN;
        let rest = block.window()[aligned..len].to_vec();
        if aligned > 0 {
            self.start_write(block, aligned).await?;
        }
        self.wait().await?;
        self.fill = Fill::Parked(rest);
        Ok(self)
    }

    /// Writes the last, partial block (padded to [`ALIGN`]) and cuts the file to `len` bytes.
    async fn finish(mut self, len: u64) -> Result<(), StoreError> {
        let fill = std::mem::replace(&mut self.fill, Fill::Parked(Vec::new()));
        let (block, filled) = fill.into_block();
        if filled > 0 {
            self.start_write(block, filled.next_multiple_of(ALIGN))
                .await?;
        }
        self.wait().await?;
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || file.set_len(len))
            .await
            .map_err(join_error)??;
        Ok(())
    }
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Internal(format!("spool writer failed: {e}"))
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
