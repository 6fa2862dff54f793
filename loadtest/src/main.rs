//! `farm-loadtest --target URL SCENARIO [options]`: see the crate docs and README.md.
//!
//! Exit status: 0 when the run had no errors, 3 when it finished with errors (the report says
//! which), 1 when it could not start (bad target, failed setup), 2 for bad options.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use loadtest::client::Pool;
use loadtest::scenarios::{self, Context};
use loadtest::{report, Args};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("farm-loadtest: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<ExitCode> {
    let args = Args::parse();
    cas::process::keep_freed_memory();
    let random_seed = u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .unwrap_or([7; 8]),
    );
    let config = match args.into_config(random_seed) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("farm-loadtest: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let invocation_id = uuid::Uuid::new_v4().to_string();
    let result = runtime.block_on(async {
        let pool = Pool::open(&config, &invocation_id)?;
        let ctx = Arc::new(Context {
            config: config.clone(),
            pool,
        });
        scenarios::run(ctx)
            .await
            .context("setting up the run (before the clock started)")
    });
    // Hashing of a next blob may still be running on a blocking thread: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    let measured = result?;
    print!("{}", report::table(&config, &measured));
    if config.json {
        println!("{}", report::json(&config, &measured));
    }
    Ok(if measured.recorder.error_count() > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
