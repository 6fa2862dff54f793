//! Copies one chunk stream to several consumers (a write-through to two tiers, a read that also
//! populates a cache) without buffering more than a few chunks.
//!
//! Each output ends cleanly only if the input did; if the input fails or the driver stops early,
//! every output ends with an error, so (by the store contract) no consumer commits a partial blob.
//! A consumer that goes away does not stop the others.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::ChunkStream;
use crate::error::StoreError;

/// Chunks buffered per output before the driver waits for the slowest live consumer.
const BUFFERED_CHUNKS: usize = 8;

/// Splits `input` into `n` identical streams, driven by the returned future (run it alongside
/// the consumers, or spawn it).
pub fn fan_out(
    mut input: ChunkStream,
    n: usize,
) -> (impl Future<Output = ()> + Send, Vec<ChunkStream>) {
    let complete = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::with_capacity(n);
    let mut outputs: Vec<ChunkStream> = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::channel::<Result<Bytes, StoreError>>(BUFFERED_CHUNKS);
        senders.push(Some(tx));
        outputs.push(output_stream(rx, complete.clone()));
    }
    let driver = async move {
        while let Some(item) = input.next().await {
            let mut alive = 0;
            for slot in senders.iter_mut() {
                let Some(tx) = slot else { continue };
                let copy = match &item {
                    Ok(b) => Ok(b.clone()),
                    Err(e) => Err(StoreError::Cancelled(format!("source stream failed: {e}"))),
                };
                if tx.send(copy).await.is_ok() {
                    alive += 1;
                } else {
                    *slot = None;
                }
            }
            if alive == 0 || item.is_err() {
                return;
            }
        }
        complete.store(true, Ordering::Release);
    };
    (driver, outputs)
}

/// A receiver that ends cleanly only when the driver saw the whole input.
fn output_stream(
    rx: mpsc::Receiver<Result<Bytes, StoreError>>,
    complete: Arc<AtomicBool>,
) -> ChunkStream {
    Box::pin(futures::stream::unfold(Some(rx), move |rx| {
        let complete = complete.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(item) => Some((item, Some(rx))),
                None if complete.load(Ordering::Acquire) => None,
                None => Some((
                    Err(StoreError::Cancelled(
                        "source stream stopped before its end".into(),
                    )),
                    None,
                )),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::collect;

    fn chunks(items: Vec<Result<Bytes, StoreError>>) -> ChunkStream {
        Box::pin(futures::stream::iter(items))
    }

    #[tokio::test]
    async fn every_output_sees_the_whole_input() {
        let input = chunks(vec![
            Ok(Bytes::from_static(b"ab")),
            Ok(Bytes::from_static(b"cd")),
        ]);
        let (driver, mut outs) = fan_out(input, 2);
        let b = outs.pop().unwrap();
        let a = outs.pop().unwrap();
        let (_, a, b) = tokio::join!(driver, collect(a), collect(b));
        assert_eq!(&a.unwrap()[..], b"abcd");
        assert_eq!(&b.unwrap()[..], b"abcd");
    }

    #[tokio::test]
    async fn a_failed_input_fails_every_output() {
        let input = chunks(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(StoreError::Internal("boom".into())),
        ]);
        let (driver, mut outs) = fan_out(input, 2);
        let b = outs.pop().unwrap();
        let a = outs.pop().unwrap();
        let (_, a, b) = tokio::join!(driver, collect(a), collect(b));
        assert!(a.is_err() && b.is_err());
    }

    #[tokio::test]
    async fn a_dropped_consumer_does_not_stop_the_other() {
        let items = (0..100).map(|_| Ok(Bytes::from_static(b"x"))).collect();
        let (driver, mut outs) = fan_out(chunks(items), 2);
        drop(outs.pop());
        let a = outs.pop().unwrap();
        let (_, a) = tokio::join!(driver, collect(a));
        assert_eq!(a.unwrap().len(), 100);
    }

    #[tokio::test]
    async fn a_driver_that_stops_early_leaves_outputs_failed() {
        let items = (0..100).map(|_| Ok(Bytes::from_static(b"x"))).collect();
        let (driver, mut outs) = fan_out(chunks(items), 1);
        drop(driver);
        assert!(collect(outs.pop().unwrap()).await.is_err());
    }
}
