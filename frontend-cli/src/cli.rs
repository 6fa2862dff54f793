//! The command line of `cargo farm`: cargo's build flags where they apply, plus where to build.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use resolver::{BuildMode, BuildRequest, TargetSelection};

/// `cargo farm`: build Cargo workspaces as hermetic, cached REAPI actions.
#[derive(Parser, Debug)]
#[command(name = "cargo-farm", bin_name = "cargo farm", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compile the selected packages (like `cargo build`).
    Build(BuildArgs),
    /// Check the selected packages for errors without producing artifacts (like `cargo check`).
    Check(BuildArgs),
    /// Serve a shared farm from this machine: CAS, action cache, scheduler and local workers.
    Up(UpArgs),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum MessageFormat {
    #[default]
    Human,
    Short,
    Json,
}

/// Where actions run and results are cached.
#[derive(Args, Debug, Clone, Default)]
pub struct FarmArgs {
    /// Execute on a running farm (REAPI endpoint, e.g. grpc://farm:8980).
    #[arg(long, env = "CARGO_FARM_REMOTE", conflicts_with = "remote_cache")]
    pub remote: Option<String>,
    /// Execute locally (sandboxed) but read and write this farm's cache.
    #[arg(long, env = "CARGO_FARM_REMOTE_CACHE")]
    pub remote_cache: Option<String>,
    /// REAPI instance name.
    #[arg(long, env = "CARGO_FARM_INSTANCE", default_value = "")]
    pub instance: String,
    /// The embedded farm's directory (CAS, action cache, worker caches) and the local caches.
    #[arg(long, env = "CARGO_FARM_HOME")]
    pub farm_home: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    /// Package(s) to build.
    #[arg(short = 'p', long = "package", value_name = "SPEC")]
    pub packages: Vec<String>,
    /// Build every workspace member.
    #[arg(long, alias = "all")]
    pub workspace: bool,
    /// Exclude packages from --workspace.
    #[arg(long, value_name = "SPEC", requires = "workspace")]
    pub exclude: Vec<String>,
    /// Build with the release profile.
    #[arg(short = 'r', long, conflicts_with = "profile")]
    pub release: bool,
    /// Build with the given profile.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Build for the target triple(s).
    #[arg(long, value_name = "TRIPLE")]
    pub target: Vec<String>,
    /// Features to activate (space or comma separated).
    #[arg(short = 'F', long, value_name = "FEATURES")]
    pub features: Vec<String>,
    /// Activate all features.
    #[arg(long)]
    pub all_features: bool,
    /// Do not activate the `default` feature.
    #[arg(long)]
    pub no_default_features: bool,
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// Require Cargo.lock to be up to date.
    #[arg(long)]
    pub locked: bool,
    /// Run without accessing the network.
    #[arg(long)]
    pub offline: bool,
    /// --locked and --offline.
    #[arg(long)]
    pub frozen: bool,
    /// Actions in flight at once.
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Output format of diagnostics and messages.
    #[arg(long, value_enum, default_value_t = MessageFormat::Human)]
    pub message_format: MessageFormat,
    #[arg(long)]
    pub lib: bool,
    #[arg(long)]
    pub bins: bool,
    #[arg(long, value_name = "NAME")]
    pub bin: Vec<String>,
    #[arg(long)]
    pub examples: bool,
    #[arg(long, value_name = "NAME")]
    pub example: Vec<String>,
    #[arg(long)]
    pub tests: bool,
    #[arg(long, value_name = "NAME")]
    pub test: Vec<String>,
    #[arg(long)]
    pub benches: bool,
    #[arg(long)]
    pub all_targets: bool,
    /// Print each action's command line.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    #[command(flatten)]
    pub farm: FarmArgs,
}

impl BuildArgs {
    /// The cargo-level request.
    pub fn request(&self, mode: BuildMode) -> BuildRequest {
        let features = self
            .features
            .iter()
            .flat_map(|f| f.split([',', ' ']))
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        BuildRequest {
            cargo: None,
            manifest_path: self.manifest_path.clone(),
            cwd: None,
            mode,
            packages: self.packages.clone(),
            workspace: self.workspace,
            exclude: self.exclude.clone(),
            release: self.release,
            profile: self.profile.clone(),
            targets: self.target.clone(),
            features,
            all_features: self.all_features,
            no_default_features: self.no_default_features,
            locked: self.locked,
            offline: self.offline,
            frozen: self.frozen,
            selection: TargetSelection {
                lib: self.lib,
                bins: self.bins,
                bin: self.bin.clone(),
                examples: self.examples,
                example: self.example.clone(),
                tests: self.tests,
                test: self.test.clone(),
                benches: self.benches,
                all_targets: self.all_targets,
            },
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Address to serve REAPI on.
    #[arg(long, default_value = "127.0.0.1:8980")]
    pub listen: SocketAddr,
    /// Local workers.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Actions each worker runs at once (default: the number of CPUs).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Byte budget of the CAS.
    #[arg(long, default_value = "20GiB")]
    pub max_size: bytesize::ByteSize,
    /// The farm's directory.
    #[arg(long, env = "CARGO_FARM_HOME")]
    pub farm_home: Option<PathBuf>,
}

/// `$CARGO_FARM_HOME`, else `~/.cache/cargo-farm`.
pub fn farm_home(flag: Option<&PathBuf>) -> PathBuf {
    if let Some(p) = flag {
        return p.clone();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("cargo-farm")
}
