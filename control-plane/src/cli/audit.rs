//! `meshwarden audit`: the audit trail of applies and deletes.

use super::{client, output, table, Output};
use crate::api::pb;
use crate::audit::AuditEntry;

/// `audit` arguments.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Most recent entries to show (0: every entry kept).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Output format (`yaml` prints the JSON view as YAML).
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Prints the most recent audit entries, oldest first.
pub async fn run(server: &str, args: AuditArgs) -> anyhow::Result<()> {
    let entries: Vec<AuditEntry> = client::audit(server)
        .await?
        .list(pb::ListAuditRequest { limit: args.limit })
        .await
        .map_err(client::status_error)?
        .into_inner()
        .entries
        .into_iter()
        .map(entry)
        .collect();
    match args.output {
        Output::Json => output::println(&serde_json::to_string_pretty(&entries)?),
        Output::Yaml => output::print(&serde_yaml::to_string(&entries)?),
        Output::Table => {
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        table::age(e.at_unix_ms),
                        e.identity.clone(),
                        e.action.clone(),
                        format!("{}/{}", e.kind, e.name),
                        dash(&e.old_version),
                        dash(&e.new_version),
                        e.result.clone(),
                        e.message.clone(),
                    ]
                })
                .collect();
            output::print(&table::render(
                &[
                    "SEQ", "AGE", "IDENTITY", "ACTION", "POLICY", "OLD", "NEW", "RESULT", "MESSAGE",
                ],
                &rows,
            ))
        }
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn entry(e: pb::AuditEntry) -> AuditEntry {
    AuditEntry {
        seq: e.seq,
        at_unix_ms: e.at_unix_ms,
        identity: e.identity,
        role: e.role,
        remote: e.remote,
        action: e.action,
        kind: e.kind,
        name: e.name,
        old_version: e.old_version,
        new_version: e.new_version,
        result: e.result,
        code: e.code,
        message: e.message,
    }
}
