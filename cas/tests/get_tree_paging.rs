//! GetTree paging over a real gRPC client: a page token resumes where its page stopped, so a
//! client fetching a large tree one page per call reads each directory about once, not the
//! whole tree again for every page.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use cas::digest::Digest;
use cas::service::Storage;
use cas::store::memory::MemoryStore;
use cas::{BlobStore, ByteRange, ChunkStream, StoreError};
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// A memory store that records every read with the epoch (test phase) it happened in.
#[derive(Debug)]
struct Counting {
    inner: MemoryStore,
    epoch: AtomicUsize,
    reads: Mutex<Vec<(usize, Digest)>>,
}

impl Counting {
    fn new() -> Self {
        Counting {
            inner: MemoryStore::new(1 << 30),
            epoch: AtomicUsize::new(0),
            reads: Mutex::new(Vec::new()),
        }
    }

    fn set_epoch(&self, epoch: usize) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    fn reads(&self) -> Vec<(usize, Digest)> {
        self.reads.lock().clone()
    }
}

#[async_trait::async_trait]
impl BlobStore for Counting {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, StoreError> {
        self.inner.find_missing(digests).await
    }
    async fn get(&self, digest: &Digest, range: ByteRange) -> Result<ChunkStream, StoreError> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        self.reads.lock().push((epoch, *digest));
        self.inner.get(digest, range).await
    }
    async fn put(&self, digest: &Digest, data: ChunkStream) -> Result<(), StoreError> {
        self.inner.put(digest, data).await
    }
    fn kind(&self) -> &'static str {
        "counting"
    }
}

/// Stores `dir` and returns its digest.
async fn store_dir(store: &Counting, dir: &reapi::Directory) -> Digest {
    let data = Bytes::from(dir.encode_to_vec());
    let digest = Digest::of(&data);
    store.inner.put_bytes(&digest, data).await.unwrap();
    digest
}

/// A directory with one file whose long name makes the directory `pad` bytes or so, so that a
/// page of them is larger than the client's HTTP/2 window and the server cannot run far ahead
/// of a client that only wants one page.
fn leaf(name: &str, pad: usize) -> reapi::Directory {
    reapi::Directory {
        files: vec![reapi::FileNode {
            name: format!("{name}-{}", "x".repeat(pad)),
            digest: Some(Digest::EMPTY.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// root -> `fan` directories -> `fan` leaves each: 1 + fan + fan² distinct directories.
async fn build_tree(store: &Counting, fan: usize) -> (Digest, HashSet<Digest>) {
    let mut all = HashSet::new();
    let mut root = reapi::Directory::default();
    for i in 0..fan {
        let mut mid = leaf(&format!("mid{i}"), 64);
        for j in 0..fan {
            let child = leaf(&format!("leaf{i}-{j}"), 2000);
            let digest = store_dir(store, &child).await;
            all.insert(digest);
            mid.directories.push(reapi::DirectoryNode {
                name: format!("c{j:03}"),
                digest: Some(digest.to_proto()),
            });
        }
        let digest = store_dir(store, &mid).await;
        all.insert(digest);
        root.directories.push(reapi::DirectoryNode {
            name: format!("m{i:03}"),
            digest: Some(digest.to_proto()),
        });
    }
    let root_digest = store_dir(store, &root).await;
    all.insert(root_digest);
    (root_digest, all)
}

/// A client with HTTP/2's initial 64 KiB windows (hyper's client defaults to megabytes): a
/// server that streams ahead of what the client has read soon has to wait.
async fn client(server: &common::TestServer) -> ContentAddressableStorageClient<Channel> {
    let channel = Endpoint::from_shared(server.url.clone())
        .unwrap()
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(WINDOW))
        .connect()
        .await
        .unwrap();
    ContentAddressableStorageClient::new(channel)
        .max_decoding_message_size(common::CLIENT_MESSAGE_BYTES)
}

const WINDOW: u32 = 64 * 1024;

fn request(root: &Digest, page_size: i32, page_token: String) -> reapi::GetTreeRequest {
    reapi::GetTreeRequest {
        root_digest: Some(root.to_proto()),
        page_size,
        page_token,
        ..Default::default()
    }
}

/// The first page of one GetTree call (the rest of the stream is dropped unread).
async fn first_page(
    c: &mut ContentAddressableStorageClient<Channel>,
    root: &Digest,
    page_size: i32,
    token: String,
) -> Result<reapi::GetTreeResponse, tonic::Status> {
    let mut stream = c
        .get_tree(request(root, page_size, token))
        .await?
        .into_inner();
    stream.next().await.expect("at least one page")
}

/// Every page of one GetTree call.
async fn all_pages(
    c: &mut ContentAddressableStorageClient<Channel>,
    root: &Digest,
    page_size: i32,
    token: String,
) -> Result<Vec<reapi::GetTreeResponse>, tonic::Status> {
    let mut stream = c
        .get_tree(request(root, page_size, token))
        .await?
        .into_inner();
    let mut pages = Vec::new();
    while let Some(page) = stream.next().await {
        pages.push(page?);
    }
    Ok(pages)
}

fn digests(dirs: &[reapi::Directory]) -> Vec<Digest> {
    dirs.iter()
        .map(|d| Digest::of(&d.encode_to_vec()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_page_per_call_reads_each_directory_about_once() {
    let store = Arc::new(Counting::new());
    let (root, expected) = build_tree(&store, 48).await; // 2,353 directories
    let ac = Arc::new(MemoryStore::new(1 << 20));
    let server = common::start(Storage::new(store.clone(), ac, common::options())).await;
    let mut c = client(&server).await;

    // The whole tree in one call: every directory once, root first.
    let whole: Vec<reapi::Directory> = all_pages(&mut c, &root, 0, String::new())
        .await
        .unwrap()
        .into_iter()
        .flat_map(|p| p.directories)
        .collect();
    let whole_digests = digests(&whole);
    assert_eq!(whole_digests.len(), expected.len());
    assert_eq!(
        whole_digests.iter().copied().collect::<HashSet<_>>(),
        expected
    );
    assert_eq!(whole_digests[0], root);

    // Then one page per call, each call resuming from the previous page's token. Reads are
    // tagged: epoch 2k while call k works for its first page, 2k+1 after it arrived (the
    // server reads ahead until it sees the client drop the stream), and the next call waits
    // until the store is quiet.
    let page_size = 40usize;
    let before = store.reads().len();
    let mut pages: Vec<Vec<Digest>> = Vec::new();
    let mut token = String::new();
    loop {
        let call = pages.len() + 1;
        store.set_epoch(2 * call);
        let mut stream = c
            .get_tree(request(&root, page_size as i32, token))
            .await
            .unwrap()
            .into_inner();
        let page = stream.next().await.expect("a page").unwrap();
        store.set_epoch(2 * call + 1);
        drop(stream);
        wait_until_quiet(&store).await;
        assert!(page.directories.len() <= page_size);
        pages.push(digests(&page.directories));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let calls = pages.len();
    assert_eq!(calls, expected.len().div_ceil(page_size));
    let paged: Vec<Digest> = pages.iter().flatten().copied().collect();
    assert_eq!(
        paged, whole_digests,
        "the pages, in order, are the whole tree"
    );

    // No call re-read a directory of an earlier page (a walk restarted from the root would
    // read all of them), and each call read its own page, the first directory of the next one
    // (to know there is one), and what the server streamed ahead of the client (a few pages,
    // as the 64 KiB window allows) before it saw the stream dropped.
    let page_of: HashMap<Digest, usize> = pages
        .iter()
        .enumerate()
        .flat_map(|(i, page)| page.iter().map(move |d| (*d, i + 1)))
        .collect();
    let reads = store.reads();
    let mut per_call = vec![0usize; calls + 1];
    for (epoch, digest) in &reads[before..] {
        let call = epoch / 2;
        let page = page_of[digest];
        assert!(page >= call, "call {call} re-read {digest} of page {page}");
        per_call[call] += 1;
    }
    let total: usize = per_call.iter().sum();
    println!(
        "{} directories, {calls} calls of {page_size}: {total} reads, at most {} in one call",
        expected.len(),
        per_call.iter().max().unwrap_or(&0)
    );
    for (call, n) in per_call.iter().enumerate().skip(1) {
        assert!(
            *n <= 4 * (page_size + 1),
            "call {call} read {n} directories"
        );
    }
    // Restarting from the root would cost about calls / 2 = 30 times the tree.
    assert!(total <= 4 * expected.len(), "{total} reads");
}

/// Waits until the store has seen no read for a while (a dropped stream has stopped).
async fn wait_until_quiet(store: &Counting) {
    let mut last = store.reads().len();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let now = store.reads().len();
        if now == last {
            return;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_resume_on_another_server_and_bad_tokens_are_refused() {
    let store = Arc::new(Counting::new());
    let (root, _) = build_tree(&store, 12).await; // 157 directories
    let (other_root, _) = build_tree(&store, 3).await;
    let ac = Arc::new(MemoryStore::new(1 << 20));
    let storage = Storage::new(store.clone(), ac, common::options());
    let first = common::start(storage.clone()).await;
    // Another process over the same CAS (a replica, or this one after a restart): it never
    // saw the walk the token belongs to, so it replays it.
    let second = common::start(storage).await;
    let mut a = client(&first).await;
    let mut b = client(&second).await;

    let whole: Vec<Digest> = all_pages(&mut a, &root, 0, String::new())
        .await
        .unwrap()
        .iter()
        .flat_map(|p| digests(&p.directories))
        .collect();
    let pages = all_pages(&mut a, &root, 25, String::new()).await.unwrap();
    assert_eq!(pages.len(), whole.len().div_ceil(25));
    for (i, page) in pages.iter().enumerate().take(pages.len() - 1) {
        let rest_here: Vec<Digest> = all_pages(&mut a, &root, 25, page.next_page_token.clone())
            .await
            .unwrap()
            .iter()
            .flat_map(|p| digests(&p.directories))
            .collect();
        let rest_there: Vec<Digest> = all_pages(&mut b, &root, 25, page.next_page_token.clone())
            .await
            .unwrap()
            .iter()
            .flat_map(|p| digests(&p.directories))
            .collect();
        assert_eq!(rest_here, whole[(i + 1) * 25..].to_vec());
        assert_eq!(rest_there, rest_here, "replayed on another server");
    }

    let token = pages[1].next_page_token.clone();
    let mut refused = vec![
        (other_root, token.clone(), "another tree"),
        (root, token[..token.len() - 2].to_string(), "truncated"),
        (root, format!("{token}00"), "extended"),
        (root, token.to_uppercase(), "upper case"),
        (root, "not a token".to_string(), "garbage"),
        (root, "00".repeat(16), "old format"),
    ];
    for i in [0, 5, 20, 40, 60] {
        let mut forged = token.clone();
        let c = if &token[i..i + 1] == "0" { "1" } else { "0" };
        forged.replace_range(i..i + 1, c);
        refused.push((root, forged, "altered"));
    }
    for (r, t, what) in refused {
        for c in [&mut a, &mut b] {
            let err = first_page(c, &r, 25, t.clone()).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        }
    }
    // Both servers keep serving.
    assert_eq!(
        first_page(&mut b, &root, 0, String::new())
            .await
            .unwrap()
            .directories
            .len(),
        whole.len()
    );
}
