//! `meshwarden history KIND NAME` and `meshwarden rollback KIND NAME [--to REV]`.

use super::{client, output, table, Output};
use crate::api::pb;
use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

/// `history` arguments.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Kind (`trace`, `tracepolicy`, `TracePolicy`, ...).
    pub kind: String,
    /// Policy name.
    pub name: String,
    /// Output format (`json` and `yaml` include each revision's document).
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// `rollback` arguments.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// Kind (`trace`, `tracepolicy`, `TracePolicy`, ...).
    pub kind: String,
    /// Policy name.
    pub name: String,
    /// The revision to restore (see `history`); default: the newest one before the
    /// current revision that holds content.
    #[arg(long = "to", value_name = "REV")]
    pub to: Option<u64>,
    /// Validate on the server and report what would change, without storing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// One revision as `history -o json|yaml` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RevisionView {
    revision: u64,
    change: String,
    actor: String,
    at_unix_ms: i64,
    generation: u64,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollback_of: Option<u64>,
    /// `null` for a deletion.
    document: Option<Value>,
}

impl RevisionView {
    fn of(r: pb::PolicyRevision) -> anyhow::Result<Self> {
        let document = if r.document_json.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&r.document_json).with_context(|| {
                format!(
                    "control plane sent an unreadable document for revision {}",
                    r.revision
                )
            })?)
        };
        Ok(Self {
            revision: r.revision,
            change: r.change,
            actor: r.actor,
            at_unix_ms: r.at_unix_ms,
            generation: r.generation,
            version: r.version,
            rollback_of: (r.rollback_of != 0).then_some(r.rollback_of),
            document,
        })
    }
}

/// Prints the kept revisions of one policy, oldest first.
pub async fn history(server: &str, args: HistoryArgs) -> anyhow::Result<()> {
    let kind = super::get::parse_kind(&args.kind)?;
    let response = client::policies(server)
        .await?
        .history(pb::HistoryRequest {
            kind: kind.to_string(),
            name: args.name.clone(),
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    let views = response
        .revisions
        .into_iter()
        .map(RevisionView::of)
        .collect::<anyhow::Result<Vec<_>>>()?;
    match args.output {
        Output::Json => output::println(&serde_json::to_string_pretty(&views)?),
        Output::Yaml => output::print(&serde_yaml::to_string(&views)?),
        Output::Table => output::print(&render(&views)),
    }
}

fn render(views: &[RevisionView]) -> String {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            vec![
                v.revision.to_string(),
                match v.rollback_of {
                    Some(from) => format!("{} (to {from})", v.change),
                    None => v.change.clone(),
                },
                v.actor.clone(),
                table::age(v.at_unix_ms),
                if v.version.is_empty() {
                    "-".into()
                } else {
                    v.version.clone()
                },
                v.generation.to_string(),
            ]
        })
        .collect();
    table::render(
        &[
            "REVISION",
            "CHANGE",
            "ACTOR",
            "AGE",
            "VERSION",
            "GENERATION",
        ],
        &rows,
    )
}

/// Rolls one policy back and prints what changed, as `apply` does.
pub async fn rollback(server: &str, args: RollbackArgs) -> anyhow::Result<()> {
    let kind = super::get::parse_kind(&args.kind)?;
    let response = client::policies(server)
        .await?
        .rollback(pb::RollbackRequest {
            kind: kind.to_string(),
            name: args.name.clone(),
            to_revision: args.to.unwrap_or(0),
            dry_run: args.dry_run,
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    output::print(&super::apply::render(&response.results, args.dry_run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_who_what_and_rollbacks() {
        let view = |revision, change: &str, rollback_of| RevisionView {
            revision,
            change: change.into(),
            actor: "ci".into(),
            at_unix_ms: 0,
            generation: revision + 10,
            version: if change == "deleted" { "" } else { "abc" }.into(),
            rollback_of,
            document: None,
        };
        let out = render(&[
            view(1, "created", None),
            view(2, "deleted", None),
            view(3, "rolled-back", Some(1)),
        ]);
        assert_eq!(
            out,
            "REVISION   CHANGE               ACTOR   AGE   VERSION   GENERATION\n\
             1          created              ci      -     abc       11\n\
             2          deleted              ci      -     -         12\n\
             3          rolled-back (to 1)   ci      -     abc       13\n"
        );
    }
}
