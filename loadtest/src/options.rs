//! Command-line options of `farm-loadtest` and their validation into a typed [`Config`].
//!
//! Flags are parsed by clap; everything clap cannot check (size mixes, weighted operation lists,
//! ranges, which flags fit which scenario) is checked here, so a scenario only ever sees a
//! consistent [`Config`].

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Parser, ValueEnum};

/// Why the options cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OptionsError(pub String);

fn bad(msg: impl Into<String>) -> OptionsError {
    OptionsError(msg.into())
}

/// The load scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// FindMissingBlobs + BatchUpdateBlobs + BatchReadBlobs of small blobs.
    CasSmall,
    /// ByteStream Write and Read of large blobs, streamed.
    CasLarge,
    /// GetActionResult / UpdateActionResult.
    Ac,
    /// Execute of actions whose results are in the action cache.
    ExecuteCached,
    /// Execute of real trivial actions (`/bin/true`, each with its own salt); needs workers.
    Execute,
    /// A synthetic build graph submitted as a client would; needs workers.
    Graph,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::CasSmall => "cas-small",
            Scenario::CasLarge => "cas-large",
            Scenario::Ac => "ac",
            Scenario::ExecuteCached => "execute-cached",
            Scenario::Execute => "execute",
            Scenario::Graph => "graph",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "farm-loadtest",
    version,
    about = "Drives load against any REAPI v2 endpoint and reports throughput, latency and errors",
    after_help = "A request is one RPC (one Execute with its whole operation stream; for graph, one \
                  run of the whole graph). The run stops after --requests requests or \
                  --duration seconds, whichever comes first (default: 10 s; graph: 1 run)."
)]
pub struct Args {
    /// The endpoint: http://HOST:PORT, grpc://HOST:PORT, https://HOST:PORT or HOST:PORT.
    #[arg(long)]
    pub target: String,
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Requests in flight (graph: Executes in flight, like a client's -j).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Stop starting requests after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after exactly this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// REAPI instance name.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// Sent as `authorization: Bearer TOKEN` on every call.
    #[arg(long, env = "FARM_LOADTEST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate(s) to trust for https:// targets instead of the system roots.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Server name to verify for https:// targets (default: the URL's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
    /// PEM client certificate for mutual TLS (with --client-key).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Seed of content, salts and choices; the same seed repeats a run exactly (so its uploads
    /// find their blobs present and its actions cached). Default: a fresh one, printed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
    /// HTTP/2 connections to spread requests over (default: one per generator thread).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Threads of the load generator (default: every core it may use).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds one request may take before it counts as DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,

    /// cas-small: every blob this size (default 4KiB); cas-large: the blob size (default 256MiB).
    #[arg(long, conflicts_with = "sizes")]
    pub blob_size: Option<ByteSize>,
    /// cas-small: a weighted size mix, e.g. 1KiB:50,4KiB:40,64KiB:10.
    #[arg(long)]
    pub sizes: Option<String>,
    /// cas-small: blobs per batch request (capped by the server's batch limit).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// cas-small: fraction of FindMissingBlobs digests that exist; ac: fraction of
    /// GetActionResult calls for results that were written.
    #[arg(long, default_value_t = 0.5)]
    pub hit_ratio: f64,
    /// Operations to run. cas-small: find,update,read (a client's flow: find, upload what is
    /// missing, read); cas-large: write,read; ac: get,update with optional weights (get:9,update:1).
    #[arg(long)]
    pub ops: Option<String>,
    /// Blobs (cas-small, cas-large) or action results (ac) written before the clock starts, for
    /// reads and hits to find.
    #[arg(long)]
    pub preload: Option<u64>,
    /// Hash what is read and count mismatches as DATA_LOSS (default: check sizes only).
    #[arg(long)]
    pub verify: bool,
    /// cas-large: ByteStream chunk size.
    #[arg(long, default_value = "1MiB")]
    pub chunk_size: ByteSize,

    /// execute-cached: distinct cached actions cycled through.
    #[arg(long, default_value_t = 1000)]
    pub actions: u64,
    /// Platform property NAME=VALUE of executed actions (repeatable; default OSFamily=linux).
    #[arg(long = "platform")]
    pub platform: Vec<String>,

    /// graph: actions per level.
    #[arg(long, default_value_t = 8)]
    pub width: usize,
    /// graph: levels (the critical path is this many actions long).
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// graph: how long each action runs (`sleep`), in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub action_ms: u64,
    /// graph: inputs of each action from the level before (at most --width).
    #[arg(long, default_value_t = 2)]
    pub fan_in: usize,
}

/// cas-small's operations, run as a client's flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CasSmallOps {
    pub find: bool,
    pub update: bool,
    pub read: bool,
}

/// cas-large's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CasLargeOps {
    pub write: bool,
    pub read: bool,
}

/// ac's operations and their weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcOps {
    pub get: u32,
    pub update: u32,
}

/// A weighted set of blob sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeMix {
    /// (size in bytes, weight), weights > 0.
    pub entries: Vec<(u64, u32)>,
}

impl SizeMix {
    pub fn single(size: u64) -> Self {
        SizeMix {
            entries: vec![(size, 1)],
        }
    }

    pub fn max_size(&self) -> u64 {
        self.entries.iter().map(|e| e.0).max().unwrap_or(0)
    }

    /// The size whose cumulative weight covers `r` (any u64; taken modulo the total weight).
    pub fn pick(&self, r: u64) -> u64 {
        let total: u64 = self.entries.iter().map(|e| u64::from(e.1)).sum();
        let mut x = r % total.max(1);
        for &(size, weight) in &self.entries {
            if x < u64::from(weight) {
                return size;
            }
            x -= u64::from(weight);
        }
        self.entries.last().map_or(0, |e| e.0)
    }
}

impl FromStr for SizeMix {
    type Err = OptionsError;

    /// `SIZE:WEIGHT,SIZE:WEIGHT,...` (a bare `SIZE` weighs 1).
    fn from_str(s: &str) -> Result<Self, OptionsError> {
        let mut entries = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (size, weight) = match part.rsplit_once(':') {
                Some((size, weight)) => {
                    let weight = weight
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| bad(format!("bad weight in size mix entry {part:?}")))?;
                    (size, weight)
                }
                None => (part, 1),
            };
            let size = parse_size(size)?;
            if weight == 0 {
                return Err(bad(format!("size mix entry {part:?} has weight 0")));
            }
            entries.push((size, weight));
        }
        if entries.is_empty() {
            return Err(bad("empty size mix"));
        }
        Ok(SizeMix { entries })
    }
}

/// A size like `4KiB`, `256 MiB` or `4096`.
pub fn parse_size(s: &str) -> Result<u64, OptionsError> {
    s.trim()
        .parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| bad(format!("bad size {s:?}: {e}")))
}

/// `a,b:3,c` → [(a,1),(b,3),(c,1)], each name one of `known`.
fn parse_ops(s: &str, known: &[&str]) -> Result<Vec<(String, u32)>, OptionsError> {
    let mut out: Vec<(String, u32)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once(':') {
            Some((n, w)) => (
                n.trim(),
                w.trim()
                    .parse::<u32>()
                    .map_err(|_| bad(format!("bad weight in --ops entry {part:?}")))?,
            ),
            None => (part, 1),
        };
        if !known.contains(&name) {
            return Err(bad(format!(
                "unknown operation {name:?} in --ops; this scenario knows {}",
                known.join(", ")
            )));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(bad(format!("operation {name:?} named twice in --ops")));
        }
        out.push((name.to_string(), weight));
    }
    if out.iter().all(|(_, w)| *w == 0) {
        return Err(bad("--ops names no operation with a weight above 0"));
    }
    Ok(out)
}

/// When the run stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StopAfter {
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
}

/// Scenario-specific settings.
#[derive(Clone, Debug)]
pub enum ScenarioConfig {
    CasSmall {
        sizes: SizeMix,
        batch: usize,
        hit_ratio: f64,
        ops: CasSmallOps,
        preload: u64,
    },
    CasLarge {
        blob_size: u64,
        chunk_size: usize,
        ops: CasLargeOps,
        preload: u64,
    },
    Ac {
        hit_ratio: f64,
        ops: AcOps,
        preload: u64,
    },
    ExecuteCached {
        actions: u64,
    },
    Execute,
    Graph {
        width: usize,
        depth: usize,
        action: Duration,
        fan_in: usize,
    },
}

/// TLS settings of an https:// target.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    pub ca_cert: Option<PathBuf>,
    pub domain: Option<String>,
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// Everything a run needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub target: String,
    pub scenario: Scenario,
    pub settings: ScenarioConfig,
    pub concurrency: usize,
    pub stop: StopAfter,
    pub instance: String,
    pub token: Option<String>,
    pub tls: TlsOptions,
    pub seed: u64,
    pub json: bool,
    pub connections: usize,
    pub threads: usize,
    pub timeout: Duration,
    pub verify: bool,
    pub platform: Vec<(String, String)>,
}

/// Cores this process may run on (affinity and cgroup quota included).
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn seconds(what: &str, v: f64) -> Result<Duration, OptionsError> {
    if !(v.is_finite() && v > 0.0 && v < 1e9) {
        return Err(bad(format!("{what} must be a positive number of seconds")));
    }
    Ok(Duration::from_secs_f64(v))
}

fn fraction(what: &str, v: f64) -> Result<f64, OptionsError> {
    if !(0.0..=1.0).contains(&v) {
        return Err(bad(format!("{what} must be between 0 and 1, not {v}")));
    }
    Ok(v)
}

impl Args {
    /// Validates the options; `random_seed` is used when `--seed` is absent.
    pub fn into_config(self, random_seed: u64) -> Result<Config, OptionsError> {
        let scenario = self.scenario;
        if self.concurrency == 0 {
            return Err(bad("--concurrency must be at least 1"));
        }
        if self.requests == Some(0) {
            return Err(bad("--requests must be at least 1"));
        }
        let duration = self
            .duration
            .map(|d| seconds("--duration", d))
            .transpose()?;
        let stop = match (self.requests, duration) {
            (None, None) if scenario == Scenario::Graph => StopAfter {
                requests: Some(1),
                duration: None,
            },
            (None, None) => StopAfter {
                requests: None,
                duration: Some(Duration::from_secs(10)),
            },
            (requests, duration) => StopAfter { requests, duration },
        };
        let hit_ratio = fraction("--hit-ratio", self.hit_ratio)?;
        let ops = self.ops.as_deref();
        let settings = match scenario {
            Scenario::CasSmall => {
                let sizes = match (&self.sizes, self.blob_size) {
                    (Some(mix), _) => mix.parse::<SizeMix>()?,
                    (None, Some(size)) => SizeMix::single(size.as_u64()),
                    (None, None) => SizeMix::single(4096),
                };
                if sizes.entries.iter().any(|e| e.0 == 0) {
                    return Err(bad("blob sizes must be at least 1 byte"));
                }
                if self.batch == 0 {
                    return Err(bad("--batch must be at least 1"));
                }
                let mut flow = CasSmallOps::default();
                for (name, weight) in parse_ops(
                    ops.unwrap_or("find,update,read"),
                    &["find", "update", "read"],
                )? {
                    if weight != 1 {
                        return Err(bad(
                            "cas-small runs its operations as one flow: --ops takes no weights",
                        ));
                    }
                    match name.as_str() {
                        "find" => flow.find = true,
                        "update" => flow.update = true,
                        _ => flow.read = true,
                    }
                }
                ScenarioConfig::CasSmall {
                    sizes,
                    batch: self.batch,
                    hit_ratio,
                    ops: flow,
                    preload: self.preload.unwrap_or(10_000),
                }
            }
            Scenario::CasLarge => {
                if self.sizes.is_some() {
                    return Err(bad("cas-large takes --blob-size, not --sizes"));
                }
                let blob_size = self.blob_size.map_or(256 << 20, |b| b.as_u64());
                let chunk_size = self.chunk_size.as_u64();
                if blob_size == 0 || chunk_size == 0 || chunk_size > 16 << 20 {
                    return Err(bad(
                        "--blob-size must be at least 1 byte and --chunk-size 1 byte to 16 MiB",
                    ));
                }
                let mut flow = CasLargeOps {
                    write: false,
                    read: false,
                };
                for (name, weight) in parse_ops(ops.unwrap_or("write,read"), &["write", "read"])? {
                    if weight != 1 {
                        return Err(bad("cas-large: --ops takes no weights"));
                    }
                    match name.as_str() {
                        "write" => flow.write = true,
                        _ => flow.read = true,
                    }
                }
                ScenarioConfig::CasLarge {
                    blob_size,
                    chunk_size: chunk_size as usize,
                    ops: flow,
                    preload: self.preload.unwrap_or(self.concurrency as u64),
                }
            }
            Scenario::Ac => {
                let mut weights = AcOps { get: 0, update: 0 };
                for (name, weight) in parse_ops(ops.unwrap_or("get,update"), &["get", "update"])? {
                    match name.as_str() {
                        "get" => weights.get = weight,
                        _ => weights.update = weight,
                    }
                }
                ScenarioConfig::Ac {
                    hit_ratio,
                    ops: weights,
                    preload: self.preload.unwrap_or(1000),
                }
            }
            Scenario::ExecuteCached => {
                if self.actions == 0 {
                    return Err(bad("--actions must be at least 1"));
                }
                ScenarioConfig::ExecuteCached {
                    actions: self.actions,
                }
            }
            Scenario::Execute => ScenarioConfig::Execute,
            Scenario::Graph => {
                if self.width == 0 || self.depth == 0 {
                    return Err(bad("--width and --depth must be at least 1"));
                }
                if self.fan_in == 0 || self.fan_in > self.width {
                    return Err(bad("--fan-in must be between 1 and --width"));
                }
                if self.width.saturating_mul(self.depth) > 1_000_000 {
                    return Err(bad("the graph is limited to 1,000,000 actions"));
                }
                ScenarioConfig::Graph {
                    width: self.width,
                    depth: self.depth,
                    action: Duration::from_millis(self.action_ms),
                    fan_in: self.fan_in,
                }
            }
        };
        if ops.is_some()
            && !matches!(
                scenario,
                Scenario::CasSmall | Scenario::CasLarge | Scenario::Ac
            )
        {
            return Err(bad(format!("{} takes no --ops", scenario.name())));
        }
        let platform = if self.platform.is_empty() {
            vec![("OSFamily".to_string(), "linux".to_string())]
        } else {
            self.platform
                .iter()
                .map(|p| {
                    p.split_once('=')
                        .filter(|(k, _)| !k.is_empty())
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| bad(format!("--platform {p:?} is not NAME=VALUE")))
                })
                .collect::<Result<_, _>>()?
        };
        let threads = self.threads.unwrap_or_else(usable_cores).max(1);
        Ok(Config {
            target: self.target,
            scenario,
            settings,
            concurrency: self.concurrency,
            stop,
            instance: self.instance,
            token: self.token,
            tls: TlsOptions {
                ca_cert: self.ca_cert,
                domain: self.tls_domain,
                client_identity: self.client_cert.zip(self.client_key),
            },
            seed: self.seed.unwrap_or(random_seed),
            json: self.json,
            connections: self.connections.unwrap_or(threads).max(1),
            threads,
            timeout: seconds("--timeout", self.timeout)?,
            verify: self.verify,
            platform,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Config, OptionsError> {
        let mut argv = vec!["farm-loadtest", "--target", "h:1"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)
            .map_err(|e| bad(e.to_string()))?
            .into_config(7)
    }

    #[test]
    fn size_mixes_parse_and_pick_by_weight() {
        let mix: SizeMix = "1KiB:50, 4KiB:40,64KiB:10".parse().unwrap();
        assert_eq!(mix.entries, vec![(1024, 50), (4096, 40), (65536, 10)]);
        assert_eq!(mix.pick(0), 1024);
        assert_eq!(mix.pick(49), 1024);
        assert_eq!(mix.pick(50), 4096);
        assert_eq!(mix.pick(99), 65536);
        assert_eq!(mix.pick(100), 1024);
        assert_eq!(mix.max_size(), 65536);
        assert!("".parse::<SizeMix>().is_err());
        assert!("4KiB:0".parse::<SizeMix>().is_err());
        assert!("4KiB:x".parse::<SizeMix>().is_err());
        assert!("lots".parse::<SizeMix>().is_err());
        assert_eq!("4096".parse::<SizeMix>().unwrap(), SizeMix::single(4096));
    }

    #[test]
    fn defaults_stop_by_themselves() {
        let c = args(&["cas-small"]).unwrap();
        assert_eq!(c.stop.duration, Some(Duration::from_secs(10)));
        assert_eq!(c.stop.requests, None);
        assert_eq!(c.seed, 7);
        let g = args(&["graph"]).unwrap();
        assert_eq!(g.stop.requests, Some(1));
        let r = args(&["ac", "--requests", "5", "--seed", "3"]).unwrap();
        assert_eq!(r.stop.requests, Some(5));
        assert_eq!(r.stop.duration, None);
        assert_eq!(r.seed, 3);
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(args(&["cas-small", "--hit-ratio", "1.5"]).is_err());
        assert!(args(&["cas-small", "--ops", "find,nope"]).is_err());
        assert!(args(&["cas-small", "--ops", "find:2"]).is_err());
        assert!(args(&["cas-small", "--concurrency", "0"]).is_err());
        assert!(args(&["cas-small", "--duration", "-1"]).is_err());
        assert!(args(&["graph", "--fan-in", "9", "--width", "8"]).is_err());
        assert!(args(&["execute", "--ops", "get"]).is_err());
        assert!(args(&["execute", "--platform", "novalue"]).is_err());
        assert!(args(&["cas-large", "--sizes", "1KiB:1"]).is_err());
    }

    #[test]
    fn ac_ops_take_weights() {
        let c = args(&["ac", "--ops", "get:9,update:1"]).unwrap();
        match c.settings {
            ScenarioConfig::Ac { ops, .. } => assert_eq!(ops, AcOps { get: 9, update: 1 }),
            other => panic!("{other:?}"),
        }
    }
}
