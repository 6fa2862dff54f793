//! Getting blobs into the farm's CAS once: remembers what the farm is known to hold this build,
//! asks `FindMissingBlobs` for the rest, batches small uploads and streams large files.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use cas::store::grpc::GrpcStore;
use cas::store::BlobStore as _;
use cas::Digest;
use futures::StreamExt as _;
use parking_lot::Mutex;

/// Where the bytes of a blob to upload are.
#[derive(Clone, Debug)]
pub enum BlobSource {
    Bytes(Bytes),
    File(PathBuf),
}

/// Uploads into one CAS, remembering what it holds.
#[derive(Debug)]
pub struct Uploader {
    store: GrpcStore,
    present: Mutex<HashSet<Digest>>,
    /// Bytes uploaded this build.
    uploaded: Mutex<u64>,
}

/// Blobs at most this big are read into memory and sent in batches.
const SMALL: u64 = 1 << 20;
/// Bytes of one batch.
const BATCH: u64 = 3 << 20;

impl Uploader {
    pub fn new(store: GrpcStore) -> Uploader {
        Uploader {
            store,
            present: Mutex::new(HashSet::from([Digest::EMPTY])),
            uploaded: Mutex::new(0),
        }
    }

    pub fn store(&self) -> &GrpcStore {
        &self.store
    }

    /// Marks digests the farm produced (action outputs) as present.
    pub fn mark_present(&self, digests: impl IntoIterator<Item = Digest>) {
        self.present.lock().extend(digests);
    }

    pub fn uploaded_bytes(&self) -> u64 {
        *self.uploaded.lock()
    }

    /// Makes sure the CAS holds every blob of `blobs`.
    pub async fn ensure(&self, blobs: Vec<(Digest, BlobSource)>) -> Result<()> {
        let mut wanted: HashMap<Digest, BlobSource> = HashMap::new();
        {
            let present = self.present.lock();
            for (d, s) in blobs {
                if !present.contains(&d) {
                    wanted.entry(d).or_insert(s);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let digests: Vec<Digest> = wanted.keys().copied().collect();
        let mut missing = Vec::new();
        for chunk in digests.chunks(10_000) {
            missing.extend(
                self.store
                    .find_missing(chunk)
                    .await
                    .context("asking the farm which blobs it lacks")?,
            );
        }
        let missing_set: HashSet<Digest> = missing.iter().copied().collect();
        self.present
            .lock()
            .extend(digests.iter().filter(|d| !missing_set.contains(d)));

        let mut batch: Vec<(Digest, Bytes)> = Vec::new();
        let mut batch_bytes = 0u64;
        let mut large = Vec::new();
        for d in missing {
            let Some(source) = wanted.remove(&d) else {
                continue;
            };
            if d.size() > SMALL {
                large.push((d, source));
                continue;
            }
            let data = match source {
                BlobSource::Bytes(b) => b,
                BlobSource::File(p) => Bytes::from(
                    tokio::fs::read(&p)
                        .await
                        .with_context(|| format!("reading {}", p.display()))?,
                ),
            };
            if batch_bytes + d.size() > BATCH && !batch.is_empty() {
                self.send_batch(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            batch_bytes += d.size();
            batch.push((d, data));
        }
        if !batch.is_empty() {
            self.send_batch(batch).await?;
        }
        let uploads = futures::stream::iter(large.into_iter().map(|(d, s)| self.put_large(d, s)))
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        for r in uploads {
            r?;
        }
        Ok(())
    }

    async fn send_batch(&self, batch: Vec<(Digest, Bytes)>) -> Result<()> {
        let digests: Vec<Digest> = batch.iter().map(|(d, _)| *d).collect();
        let bytes: u64 = digests.iter().map(|d| d.size()).sum();
        self.store
            .batch_update(batch)
            .await
            .context("uploading inputs to the farm (BatchUpdateBlobs)")?;
        *self.uploaded.lock() += bytes;
        self.present.lock().extend(digests);
        Ok(())
    }

    async fn put_large(&self, d: Digest, source: BlobSource) -> Result<()> {
        match source {
            BlobSource::Bytes(b) => self.store.put_bytes(&d, b).await,
            BlobSource::File(p) => {
                let file = tokio::fs::File::open(&p)
                    .await
                    .with_context(|| format!("opening {}", p.display()))?;
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
                    .map(|r| r.map_err(|e| cas::StoreError::Internal(e.to_string())));
                self.store.put(&d, Box::pin(stream)).await.map_err(|e| {
                    // The server hashes what it receives: a file that changed since it was
                    // hashed is refused.
                    if matches!(e, cas::StoreError::InvalidArgument(_)) {
                        cas::StoreError::InvalidArgument(format!(
                            "{} changed while cargo farm was reading it ({e})",
                            p.display()
                        ))
                    } else {
                        e
                    }
                })
            }
        }
        .with_context(|| format!("uploading blob {d}"))?;
        *self.uploaded.lock() += d.size();
        self.present.lock().insert(d);
        Ok(())
    }
}
