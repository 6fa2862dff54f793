//! The ContentAddressableStorage service through a real tonic client over 127.0.0.1.

mod common;

use std::time::Instant;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::digest::Digest;
use cas::service::cas::max_message_bytes;
use futures::StreamExt;
use prost::Message;
use reapi::batch_update_blobs_request::Request as UpdateRequest;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use reapi::{compressor, digest_function};
use tonic::transport::Channel;
use tonic::Code;

use common::{
    channel, memory_storage, memory_storage_with, options, random_bytes, start,
    CLIENT_MESSAGE_BYTES,
};

type Client = ContentAddressableStorageClient<Channel>;

async fn client(server: &common::TestServer) -> Client {
    ContentAddressableStorageClient::new(channel(server).await)
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES)
}

fn pd(data: &[u8]) -> reapi::Digest {
    Digest::of(data).to_proto()
}

fn identity(data: &[u8]) -> UpdateRequest {
    UpdateRequest {
        digest: Some(pd(data)),
        data: data.to_vec(),
        compressor: compressor::Value::Identity as i32,
    }
}

fn update(requests: Vec<UpdateRequest>) -> reapi::BatchUpdateBlobsRequest {
    reapi::BatchUpdateBlobsRequest {
        requests,
        ..Default::default()
    }
}

fn codes_of_update(r: &reapi::BatchUpdateBlobsResponse) -> Vec<i32> {
    r.responses
        .iter()
        .map(|x| x.status.as_ref().unwrap().code)
        .collect()
}

async fn find_missing(c: &mut Client, digests: Vec<reapi::Digest>) -> Vec<reapi::Digest> {
    c.find_missing_blobs(reapi::FindMissingBlobsRequest {
        blob_digests: digests,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .missing_blob_digests
}

/// The server still answers a well-formed request.
async fn assert_alive(c: &mut Client) {
    let missing = find_missing(c, vec![pd(b"alive?")]).await;
    assert_eq!(missing, vec![pd(b"alive?")]);
}

#[tokio::test]
async fn find_missing_blobs_validates_strictly_and_answers_in_bulk() {
    let server = start(memory_storage()).await;
    let mut c = client(&server).await;
    let r = c
        .batch_update_blobs(update(vec![identity(b"present")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(codes_of_update(&r), vec![0]);

    let missing = find_missing(
        &mut c,
        vec![pd(b"present"), pd(b"absent"), pd(b""), pd(b"absent")],
    )
    .await;
    assert_eq!(missing, vec![pd(b"absent")], "empty blob is always present");

    let good = pd(b"x");
    let bad_cases = [
        reapi::Digest {
            hash: good.hash.to_uppercase(),
            size_bytes: 1,
        },
        reapi::Digest {
            hash: good.hash[..63].to_string(),
            size_bytes: 1,
        },
        reapi::Digest {
            hash: good.hash.clone(),
            size_bytes: -1,
        },
        reapi::Digest {
            hash: "not-hex".into(),
            size_bytes: 1,
        },
    ];
    for bad in bad_cases {
        let err = c
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: vec![good.clone(), bad.clone()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let shown: String = bad.hash.chars().take(10).collect();
        assert!(
            err.message().contains(&shown),
            "names the bad digest: {err:?}"
        );
        assert_alive(&mut c).await;
    }

    for (function, ok) in [
        (digest_function::Value::Unknown, true),
        (digest_function::Value::Sha256, true),
        (digest_function::Value::Sha1, false),
        (digest_function::Value::Blake3, false),
    ] {
        let r = c
            .find_missing_blobs(reapi::FindMissingBlobsRequest {
                blob_digests: vec![good.clone()],
                digest_function: function as i32,
                ..Default::default()
            })
            .await;
        assert_eq!(r.is_ok(), ok, "{function:?}: {r:?}");
        if let Err(e) = r {
            assert_eq!(e.code(), Code::InvalidArgument);
        }
    }
    let err = c
        .find_missing_blobs(reapi::FindMissingBlobsRequest {
            digest_function: 999,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_alive(&mut c).await;
}

#[tokio::test]
async fn batch_update_and_read_report_per_blob_statuses() {
    let server = start(memory_storage()).await;
    let mut c = client(&server).await;
    let good = b"good blob".to_vec();
    let wrong_hash = UpdateRequest {
        digest: Some(pd(b"something else")),
        data: b"something elsf".to_vec(),
        compressor: 0,
    };
    let wrong_len = UpdateRequest {
        digest: Some(reapi::Digest {
            hash: pd(b"short").hash,
            size_bytes: 6,
        }),
        data: b"short".to_vec(),
        compressor: 0,
    };
    let bad_digest = UpdateRequest {
        digest: Some(reapi::Digest {
            hash: "abc".into(),
            size_bytes: 3,
        }),
        data: b"abc".to_vec(),
        compressor: 0,
    };
    let no_digest = UpdateRequest {
        digest: None,
        data: b"abc".to_vec(),
        compressor: 0,
    };
    let deflate = UpdateRequest {
        compressor: compressor::Value::Deflate as i32,
        ..identity(b"deflated?")
    };
    let unknown_compressor = UpdateRequest {
        compressor: 77,
        ..identity(b"compressed how?")
    };
    let r = c
        .batch_update_blobs(update(vec![
            identity(&good),
            wrong_hash,
            wrong_len,
            bad_digest,
            no_digest,
            deflate,
            unknown_compressor,
            identity(b""),
        ]))
        .await
        .unwrap()
        .into_inner();
    let ia = Code::InvalidArgument as i32;
    assert_eq!(codes_of_update(&r), vec![0, ia, ia, ia, ia, ia, ia, 0]);
    assert_eq!(r.responses[0].digest, Some(pd(&good)));
    assert_eq!(r.responses[3].digest.as_ref().unwrap().hash, "abc");
    for response in &r.responses[1..7] {
        assert!(!response.status.as_ref().unwrap().message.is_empty());
    }

    // Nothing refused was stored.
    let missing = find_missing(
        &mut c,
        vec![pd(&good), pd(b"something else"), pd(b"deflated?")],
    )
    .await;
    assert_eq!(missing, vec![pd(b"something else"), pd(b"deflated?")]);

    let r = c
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![
                pd(&good),
                pd(b"never stored"),
                reapi::Digest {
                    hash: "zz".into(),
                    size_bytes: 1,
                },
                pd(b""),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = r
        .responses
        .iter()
        .map(|x| x.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, vec![0, Code::NotFound as i32, ia, 0]);
    assert_eq!(r.responses[0].data, good);
    assert_eq!(
        r.responses[0].compressor,
        compressor::Value::Identity as i32
    );
    assert!(r.responses[3].data.is_empty());

    let err = c
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![pd(&good)],
            digest_function: digest_function::Value::Md5 as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_alive(&mut c).await;
}

#[tokio::test]
async fn batches_at_the_limit_pass_and_above_it_are_refused_by_the_service() {
    let mut opts = options();
    opts.max_batch_total_bytes = 1024 * 1024;
    let limit = opts.max_batch_total_bytes as usize;
    assert!(max_message_bytes(&opts) > 2 * limit);
    let (storage, _) = memory_storage_with(64 * 1024 * 1024, opts);
    let server = start(storage).await;
    let mut c = client(&server).await;

    // Exactly at the limit, in 4 KiB blobs.
    let blobs: Vec<Vec<u8>> = (0..limit / 4096)
        .map(|i| random_bytes(4096, i as u64))
        .collect();
    let r = c
        .batch_update_blobs(update(blobs.iter().map(|b| identity(b)).collect()))
        .await
        .unwrap()
        .into_inner();
    assert!(codes_of_update(&r).iter().all(|c| *c == 0));
    let read = c
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: blobs.iter().map(|b| pd(b)).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.responses.len(), blobs.len());
    for (resp, blob) in read.responses.iter().zip(&blobs) {
        assert_eq!(&resp.data, blob);
    }

    // Exactly at the limit, in many tiny blobs (per-blob framing must still fit a message).
    let tiny: Vec<Vec<u8>> = (0..limit / 64)
        .map(|i| random_bytes(64, 1_000_000 + i as u64))
        .collect();
    let r = c
        .batch_update_blobs(update(tiny.iter().map(|b| identity(b)).collect()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses.len(), tiny.len());
    assert!(codes_of_update(&r).iter().all(|c| *c == 0));

    // One byte over: refused by the service with a clear status, not by the transport.
    let mut over: Vec<UpdateRequest> = blobs.iter().map(|b| identity(b)).collect();
    over.push(identity(b"!"));
    let err = c.batch_update_blobs(update(over)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("limit"), "{err:?}");
    assert_alive(&mut c).await;

    // Compressed data counts by its uncompressed size.
    let big = vec![7u8; limit + 1];
    let packed = zstd::bulk::compress(&big, 3).unwrap();
    let err = c
        .batch_update_blobs(update(vec![UpdateRequest {
            digest: Some(pd(&big)),
            data: packed,
            compressor: compressor::Value::Zstd as i32,
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut digests: Vec<reapi::Digest> = blobs.iter().map(|b| pd(b)).collect();
    digests.push(pd(b"!"));
    let err = c
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_alive(&mut c).await;
}

#[tokio::test]
async fn zstd_batch_update_and_read() {
    let server = start(memory_storage()).await;
    let mut c = client(&server).await;
    let text = b"hello zstd ".repeat(1000);
    let random = random_bytes(8192, 42);
    let zstd = |data: &[u8]| UpdateRequest {
        digest: Some(pd(data)),
        data: zstd::bulk::compress(data, 3).unwrap(),
        compressor: compressor::Value::Zstd as i32,
    };
    // A "bomb": small digest, data decompressing to far more.
    let bomb = UpdateRequest {
        digest: Some(pd(b"tiny")),
        data: zstd::bulk::compress(&vec![0u8; 10 * 1024 * 1024], 3).unwrap(),
        compressor: compressor::Value::Zstd as i32,
    };
    let short = UpdateRequest {
        digest: Some(pd(&text)),
        data: zstd::bulk::compress(&text[..100], 3).unwrap(),
        compressor: compressor::Value::Zstd as i32,
    };
    let garbage = UpdateRequest {
        digest: Some(pd(b"garbage")),
        data: b"not a zstd frame".to_vec(),
        compressor: compressor::Value::Zstd as i32,
    };
    let r = c
        .batch_update_blobs(update(vec![
            zstd(&text),
            zstd(&random),
            bomb,
            short,
            garbage,
            zstd(b""),
        ]))
        .await
        .unwrap()
        .into_inner();
    let ia = Code::InvalidArgument as i32;
    assert_eq!(codes_of_update(&r), vec![0, 0, ia, ia, ia, 0]);
    assert_eq!(find_missing(&mut c, vec![pd(b"tiny")]).await.len(), 1);

    let read = |compressors: Vec<i32>| reapi::BatchReadBlobsRequest {
        digests: vec![pd(&text), pd(&random), pd(b"x")],
        acceptable_compressors: compressors,
        ..Default::default()
    };
    let r = c
        .batch_read_blobs(read(vec![compressor::Value::Zstd as i32]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses[0].compressor, compressor::Value::Zstd as i32);
    assert!(r.responses[0].data.len() < text.len());
    let unpacked = zstd::bulk::decompress(&r.responses[0].data, text.len()).unwrap();
    assert_eq!(unpacked, text);
    // Incompressible data is sent as is.
    assert_eq!(
        r.responses[1].compressor,
        compressor::Value::Identity as i32
    );
    assert_eq!(r.responses[1].data, random);
    assert_eq!(
        r.responses[2].status.as_ref().unwrap().code,
        Code::NotFound as i32
    );

    let r = c.batch_read_blobs(read(vec![])).await.unwrap().into_inner();
    assert_eq!(
        r.responses[0].compressor,
        compressor::Value::Identity as i32
    );
    assert_eq!(r.responses[0].data, text);
    assert_alive(&mut c).await;
}

fn file(name: &str, data: &[u8]) -> reapi::FileNode {
    reapi::FileNode {
        name: name.into(),
        digest: Some(pd(data)),
        ..Default::default()
    }
}

fn subdir(name: &str, dir: &reapi::Directory) -> reapi::DirectoryNode {
    reapi::DirectoryNode {
        name: name.into(),
        digest: Some(pd(&dir.encode_to_vec())),
    }
}

async fn upload_dirs(c: &mut Client, dirs: &[&reapi::Directory]) {
    let r = c
        .batch_update_blobs(update(
            dirs.iter().map(|d| identity(&d.encode_to_vec())).collect(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(codes_of_update(&r).iter().all(|c| *c == 0));
}

/// All responses of one GetTree call.
async fn get_tree(
    c: &mut Client,
    root: reapi::Digest,
    page_size: i32,
    page_token: String,
) -> Result<Vec<reapi::GetTreeResponse>, tonic::Status> {
    let mut stream = c
        .get_tree(reapi::GetTreeRequest {
            root_digest: Some(root),
            page_size,
            page_token,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut pages = Vec::new();
    while let Some(page) = stream.next().await {
        pages.push(page?);
    }
    Ok(pages)
}

fn flatten(pages: &[reapi::GetTreeResponse]) -> Vec<reapi::Directory> {
    pages.iter().flat_map(|p| p.directories.clone()).collect()
}

#[tokio::test]
async fn get_tree_walks_breadth_first_dedupes_and_pages() {
    let server = start(memory_storage()).await;
    let mut c = client(&server).await;
    // root -> a, b (identical to a), c; a -> d; c -> d, e.
    let d = reapi::Directory {
        files: vec![file("x", b"x")],
        ..Default::default()
    };
    let e = reapi::Directory {
        files: vec![file("y", b"y"), file("z", b"z")],
        ..Default::default()
    };
    let a = reapi::Directory {
        directories: vec![subdir("d", &d)],
        ..Default::default()
    };
    let cdir = reapi::Directory {
        directories: vec![subdir("d", &d), subdir("e", &e)],
        ..Default::default()
    };
    let root = reapi::Directory {
        directories: vec![subdir("a", &a), subdir("b", &a), subdir("c", &cdir)],
        ..Default::default()
    };
    upload_dirs(&mut c, &[&root, &a, &cdir, &d, &e]).await;
    let root_digest = pd(&root.encode_to_vec());

    let unpaged = get_tree(&mut c, root_digest.clone(), 0, String::new())
        .await
        .unwrap();
    assert_eq!(unpaged.len(), 1);
    assert!(unpaged[0].next_page_token.is_empty());
    let all = flatten(&unpaged);
    assert_eq!(
        all,
        vec![root.clone(), a.clone(), cdir.clone(), d.clone(), e.clone()]
    );

    for page_size in [1usize, 2] {
        let pages = get_tree(&mut c, root_digest.clone(), page_size as i32, String::new())
            .await
            .unwrap();
        assert_eq!(pages.len(), all.len().div_ceil(page_size));
        assert!(pages.iter().all(|p| p.directories.len() <= page_size));
        assert_eq!(flatten(&pages), all, "page size {page_size}");
        for (i, page) in pages.iter().enumerate() {
            let last = i + 1 == pages.len();
            assert_eq!(page.next_page_token.is_empty(), last);
            if !last {
                // Resuming from any token yields exactly the rest.
                let rest = get_tree(
                    &mut c,
                    root_digest.clone(),
                    page_size as i32,
                    page.next_page_token.clone(),
                )
                .await
                .unwrap();
                assert_eq!(flatten(&rest), all[(i + 1) * page_size..].to_vec());
            }
        }
    }

    // A token is bound to its tree; garbage tokens are refused.
    let pages = get_tree(&mut c, root_digest.clone(), 1, String::new())
        .await
        .unwrap();
    let token = pages[0].next_page_token.clone();
    let other_root = pd(&cdir.encode_to_vec());
    for (root, token) in [
        (other_root.clone(), token.clone()),
        (root_digest.clone(), "not a token".to_string()),
        (root_digest.clone(), "00".repeat(16)),
    ] {
        let err = get_tree(&mut c, root, 1, token).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_alive(&mut c).await;
    }
    let err = get_tree(&mut c, root_digest.clone(), -1, String::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = get_tree(&mut c, pd(b"no such root"), 0, String::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = get_tree(
        &mut c,
        reapi::Digest {
            hash: "bad".into(),
            size_bytes: 1,
        },
        0,
        String::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_alive(&mut c).await;
}

#[tokio::test]
async fn get_tree_omits_missing_subtrees_and_refuses_non_directories() {
    let server = start(memory_storage()).await;
    let mut c = client(&server).await;
    let missing = reapi::Directory {
        files: vec![file("gone", b"gone")],
        ..Default::default()
    };
    let present = reapi::Directory {
        files: vec![file("here", b"here")],
        ..Default::default()
    };
    let root = reapi::Directory {
        directories: vec![subdir("missing", &missing), subdir("present", &present)],
        ..Default::default()
    };
    upload_dirs(&mut c, &[&root, &present]).await;
    let pages = get_tree(&mut c, pd(&root.encode_to_vec()), 0, String::new())
        .await
        .unwrap();
    assert_eq!(flatten(&pages), vec![root.clone(), present.clone()]);

    // A root blob that is not a Directory message.
    let not_a_dir = vec![0xffu8; 16];
    let r = c
        .batch_update_blobs(update(vec![identity(&not_a_dir)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(codes_of_update(&r), vec![0]);
    let err = get_tree(&mut c, pd(&not_a_dir), 0, String::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A subdirectory that is not a Directory message: named in the error.
    let bad_child = reapi::Directory {
        directories: vec![reapi::DirectoryNode {
            name: "junk".into(),
            digest: Some(pd(&not_a_dir)),
        }],
        ..Default::default()
    };
    upload_dirs(&mut c, &[&bad_child]).await;
    let err = get_tree(&mut c, pd(&bad_child.encode_to_vec()), 0, String::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(&pd(&not_a_dir).hash), "{err:?}");

    // The empty Directory is the empty blob, present without upload.
    let pages = get_tree(&mut c, pd(b""), 0, String::new()).await.unwrap();
    assert_eq!(flatten(&pages), vec![reapi::Directory::default()]);
    assert_alive(&mut c).await;
}

#[tokio::test]
async fn blob_splitting_rpcs_are_unimplemented() {
    let server = start(memory_storage()).await;
    let mut c = client(&server).await;
    let err = c
        .split_blob(reapi::SplitBlobRequest {
            blob_digest: Some(pd(b"x")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_alive(&mut c).await;
}

/// Batches of thousands of 4 KiB blobs must sustain at least 20,000 blobs/s (checked in
/// optimized builds; debug builds only report the rate).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_update_throughput_of_small_blobs() {
    let server = start(memory_storage()).await;
    let mut c = client(&server).await;
    let per_batch = 1000;
    let batches = 20;
    let requests: Vec<Vec<UpdateRequest>> = (0..batches)
        .map(|b| {
            (0..per_batch)
                .map(|i| identity(&random_bytes(4096, (b * per_batch + i) as u64 + 7)))
                .collect()
        })
        .collect();
    let start_time = Instant::now();
    for batch in requests {
        let r = c
            .batch_update_blobs(update(batch))
            .await
            .unwrap()
            .into_inner();
        assert!(codes_of_update(&r).iter().all(|c| *c == 0));
    }
    let rate = (batches * per_batch) as f64 / start_time.elapsed().as_secs_f64();
    eprintln!("BatchUpdateBlobs: {rate:.0} blobs/s of 4 KiB");
    if !cfg!(debug_assertions) {
        assert!(rate >= 20_000.0, "{rate:.0} blobs/s");
    }
}
