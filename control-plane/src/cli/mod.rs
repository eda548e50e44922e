//! The `meshwarden` command line: `serve` runs the control plane; `apply`, `get`, `delete`
//! and `status` talk to one over gRPC; `bootstrap` renders an Envoy bootstrap.

mod apply;
mod audit;
mod bootstrap;
mod capture;
mod client;
mod diff;
pub mod documents;
mod explain;
mod get;
mod halt;
mod history;
pub mod output;
mod security;
mod serve;
#[cfg(test)]
mod serve_tests;
mod status;
mod table;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

pub use serve::ServeArgs;

/// Default `--wasm-dir`: where `make wasm` puts the packaged modules.
pub const DEFAULT_WASM_DIR: &str = "target/filters";

/// meshwarden: traffic policies for Envoy, pushed live over xDS.
#[derive(Debug, Parser)]
#[command(name = "meshwarden", version, about)]
pub struct Cli {
    /// Control plane gRPC address used by apply/get/delete/status.
    #[arg(
        long,
        global = true,
        env = "MESHWARDEN_SERVER",
        default_value = "http://127.0.0.1:18000"
    )]
    pub server: String,
    /// TLS and token of the connection to the control plane.
    #[command(flatten)]
    pub connect: client::ConnectArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: policy store, policy API, ADS/ECDS server, metrics.
    Serve(ServeArgs),
    /// Create or update policies from files, directories or stdin; all documents or none.
    Apply(ApplyArgs),
    /// List policies, or show one.
    Get(GetArgs),
    /// Delete one policy.
    Delete(DeleteArgs),
    /// Show connected proxies and the policy versions they accepted or rejected.
    Status(StatusArgs),
    /// Print an Envoy bootstrap for a proxy managed by this control plane.
    Bootstrap(bootstrap::BootstrapArgs),
    /// Stream the requests proxies capture under CapturePolicies, as they happen (the
    /// summaries the control plane still holds first), like `kubectl logs -f`.
    Capture(capture::CaptureArgs),
    /// Show the audit trail: every apply, delete, halt and resume, accepted or refused, with who and when.
    Audit(audit::AuditArgs),
    /// Show what an apply would change (per policy, and which connected proxies would get
    /// a new version), without storing anything.
    Diff(DiffArgs),
    /// Suspend fault injection and/or mirroring on every (or the selected) proxy, without
    /// editing any policy, until `resume`.
    Halt(HaltArgs),
    /// Lift a halt (every halt if no name is given).
    Resume(ResumeArgs),
    /// Explain which policies a proxy holds, which match a request, in which order, and
    /// what each would do to it.
    Explain(ExplainArgs),
    /// List the kept revisions of one policy (who, when, what), also after it was deleted.
    History(history::HistoryArgs),
    /// Set one policy back to an earlier revision (default: the one before the current),
    /// stored as a new revision; restores a deleted policy.
    Rollback(history::RollbackArgs),
}

/// `explain` arguments: a proxy (`--node-id` of a known proxy, or the identity it would
/// have) and a request.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Node id of the proxy; looked up among the proxies the control plane knows unless
    /// --cluster, --label or --namespace describe it.
    #[arg(long)]
    pub node_id: Option<String>,
    /// Envoy node cluster the proxy would have.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Node label the proxy would have (`key=value`, repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Kubernetes namespace the proxy would be in.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request path (query included).
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Request :authority (host).
    #[arg(long)]
    pub authority: Option<String>,
    /// Request header (`name:value`, repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `diff` arguments.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Policy file, directory, or `-` for stdin, as for `apply`. May be repeated.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `halt` arguments. Without selector flags the halt covers every proxy.
#[derive(Debug, clap::Args)]
pub struct HaltArgs {
    /// Kinds to suspend: `fault`, `mirror` (or FaultPolicy, MirrorPolicy); both if omitted.
    #[arg(value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Name of the halt (a halt of the same name is replaced); `default` if omitted.
    #[arg(long)]
    pub name: Option<String>,
    /// Why, shown by `get` and `status`.
    #[arg(long)]
    pub reason: Option<String>,
    /// Only proxies with these labels (`key=value[,key=value...]`, repeatable).
    #[arg(short = 'l', long)]
    pub selector: Vec<String>,
    /// Only these node ids (repeatable).
    #[arg(long = "node-id")]
    pub node_ids: Vec<String>,
    /// Only proxies of these Envoy clusters (repeatable).
    #[arg(long = "cluster")]
    pub clusters: Vec<String>,
    /// Only proxies in these Kubernetes namespaces (repeatable).
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,
}

/// `resume` arguments.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    /// The halt to lift; every halt if omitted.
    pub name: Option<String>,
}

/// `apply` arguments.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Policy file (YAML with `---` separated documents, or JSON), directory, or `-` for
    /// stdin. May be repeated; everything given is applied in one atomic request.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Validate on the server and report what would change, without storing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Overwrite even if a document's `metadata.revision` (as `get -o yaml` prints it) is
    /// no longer the policy's current revision. Without revisions, the last writer wins.
    #[arg(long)]
    pub force: bool,
}

/// `get` arguments.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Kind (`trace`, `tracepolicy`, `TracePolicy`, ...); all kinds if omitted.
    pub kind: Option<String>,
    /// Policy name; every policy of the kind if omitted.
    pub name: Option<String>,
    /// Output format. `yaml` and `json` print documents that can be applied again; they
    /// carry `metadata.revision`, so applying an edited copy is refused if the policy was
    /// changed meanwhile (`apply --force` overwrites).
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Show this kept revision of the policy (see `history`) instead of the current one;
    /// needs KIND and NAME.
    #[arg(long, requires = "name")]
    pub revision: Option<u64>,
}

/// `delete` arguments.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Kind (`trace`, `tracepolicy`, `TracePolicy`, ...).
    pub kind: String,
    /// Policy name.
    pub name: String,
}

/// `status` arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    client::configure(cli.connect.clone());
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Apply(args) => apply::run(&cli.server, args).await,
        Command::Get(args) => get::get(&cli.server, args).await,
        Command::Delete(args) => get::delete(&cli.server, args).await,
        Command::Status(args) => status::run(&cli.server, args).await,
        Command::Bootstrap(args) => bootstrap::run(args),
        Command::Audit(args) => audit::run(&cli.server, args).await,
        Command::Capture(args) => capture::run(&cli.server, args).await,
        Command::Diff(args) => diff::run(&cli.server, args).await,
        Command::Halt(args) => halt::halt(&cli.server, args).await,
        Command::Resume(args) => halt::resume(&cli.server, args).await,
        Command::Explain(args) => explain::run(&cli.server, args).await,
        Command::History(args) => history::history(&cli.server, args).await,
        Command::Rollback(args) => history::rollback(&cli.server, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn history_limit_is_at_least_one() {
        let parse = |n: &str| Cli::try_parse_from(["meshwarden", "serve", "--history-limit", n]);
        assert!(parse("0").is_err());
        assert!(matches!(
            parse("7").unwrap().command,
            Command::Serve(ServeArgs {
                history_limit: 7,
                ..
            })
        ));
    }

    #[test]
    fn server_flag_is_global() {
        let cli = Cli::try_parse_from(["meshwarden", "get", "--server", "http://x:1"]).unwrap();
        assert_eq!(cli.server, "http://x:1");
        let cli = Cli::try_parse_from([
            "meshwarden",
            "--server",
            "http://y:2",
            "status",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.server, "http://y:2");
        assert!(matches!(
            cli.command,
            Command::Status(StatusArgs {
                output: Output::Json
            })
        ));
    }
}
