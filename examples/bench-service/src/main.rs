//! bench-service: a notes service on axum. `serve` listens on an address; `selftest` drives the
//! router in process (no sockets) and prints deterministic lines, so a build can be checked.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clap::{Parser, Subcommand};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "bench-service", version, about)]
struct Cli {
    /// At most this many requests at once.
    #[arg(long, env = "BENCH_SERVICE_CONCURRENCY", default_value_t = 64)]
    concurrency: usize,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the API.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run requests through the router in process and print what they return.
    Selftest,
}

async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, Vec<u8>)> {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(serde_json::to_vec(&v)?)
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body)?).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, bytes))
}

async fn selftest(concurrency: usize) -> Result<()> {
    let app = notes_http::router(Arc::default(), concurrency);
    let notes = [
        serde_json::json!({"title": "build farm", "body": "actions run in sandboxes", "tags": ["farm", "rust"]}),
        serde_json::json!({"title": "cache", "body": "hits are cheap", "tags": ["farm"]}),
        serde_json::json!({"title": "bad", "body": "", "tags": ["Not A Tag"]}),
    ];
    let mut first_id = String::new();
    for note in notes {
        let (status, body) = call(&app, Method::POST, "/v1/notes", Some(note)).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        match v.get("id").and_then(|i| i.as_str()) {
            Some(id) => {
                if first_id.is_empty() {
                    first_id = id.to_string();
                }
                println!(
                    "POST /v1/notes -> {} id={id} digest={}",
                    status.as_u16(),
                    &v["digest"].as_str().unwrap_or("")[..12]
                );
            }
            None => println!("POST /v1/notes -> {} {}", status.as_u16(), v["error"]),
        }
    }
    let (status, body) = call(&app, Method::GET, &format!("/v1/notes/{first_id}"), None).await?;
    println!(
        "GET /v1/notes/{{id}} -> {} {}",
        status.as_u16(),
        String::from_utf8_lossy(&body)
    );
    let (status, body) = call(&app, Method::GET, "/v1/notes?tag=rust", None).await?;
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    println!(
        "GET /v1/notes?tag=rust -> {} {} note(s)",
        status.as_u16(),
        listed.len()
    );
    let (status, body) = call(&app, Method::GET, "/v1/notes.pb?tag=farm", None).await?;
    let list = notes_http::decode_list(&body).context("decoding the protobuf list")?;
    let titles: Vec<_> = list.notes.iter().map(|n| n.title.as_str()).collect();
    println!(
        "GET /v1/notes.pb?tag=farm -> {} {} bytes, total={} titles={titles:?}",
        status.as_u16(),
        body.len(),
        list.total
    );
    let (status, body) = call(&app, Method::GET, "/healthz", None).await?;
    println!(
        "GET /healthz -> {} {}",
        status.as_u16(),
        String::from_utf8_lossy(&body)
    );
    if list.total != 2 {
        bail!("expected 2 notes tagged farm, got {}", list.total);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Selftest => selftest(cli.concurrency).await,
        Cmd::Serve { listen } => {
            let app = notes_http::router(Arc::default(), cli.concurrency);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            tracing::info!(%listen, "serving");
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            Ok(())
        }
    }
}
