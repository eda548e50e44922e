//! `meshwarden diff -f FILE`: what an apply would change, like `kubectl diff`. The server
//! validates the documents as an apply would and composes the would-be configuration of
//! every connected proxy with the xDS code; nothing is stored.

use super::documents::read_all;
use super::{client, output, DiffArgs, Output};
use crate::api::pb;
use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use similar::{ChangeTag, TextDiff};

/// JSON view of a diff (`diff -o json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DiffView {
    policies: Vec<PolicyView>,
    proxies: Vec<ProxyView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyView {
    kind: String,
    name: String,
    /// `created`, `changed` or `unchanged`.
    outcome: &'static str,
    current_version: String,
    new_version: String,
    /// Unified diff of the documents as YAML (empty when unchanged).
    diff: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyView {
    node_id: String,
    cluster: String,
    resources: Vec<ResourceView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceView {
    name: String,
    current_version: String,
    new_version: String,
    current_policies: Vec<String>,
    new_policies: Vec<String>,
}

/// Asks the control plane for the diff of the given files and prints it.
pub async fn run(server: &str, args: DiffArgs) -> anyhow::Result<()> {
    let docs = read_all(&args.files)?;
    let request = pb::ApplyRequest {
        documents_json: docs.iter().map(|d| d.value.to_string()).collect(),
        dry_run: true,
        ..Default::default()
    };
    super::apply::check_request(&docs, &request)?;
    let response = client::policies(server)
        .await?
        .diff(request)
        .await
        .map_err(|s| super::apply::locate(&docs, client::status_error(s)))?
        .into_inner();
    let view = view(response)?;
    match args.output {
        Output::Json => output::println(&serde_json::to_string_pretty(&view)?),
        Output::Yaml => output::print(&serde_yaml::to_string(&view)?),
        Output::Table => output::print(&render(&view)),
    }
}

fn view(response: pb::DiffResponse) -> anyhow::Result<DiffView> {
    let policies = response
        .policies
        .into_iter()
        .map(|p| {
            let outcome = match p.outcome() {
                pb::apply_result::Outcome::Created => "created",
                pb::apply_result::Outcome::Updated => "changed",
                _ => "unchanged",
            };
            let label = format!("{}/{}", p.kind.to_ascii_lowercase(), p.name);
            let diff = if outcome == "unchanged" {
                String::new()
            } else {
                unified(
                    &yaml(&p.current_document_json)
                        .with_context(|| format!("{label}: stored document"))?,
                    &yaml(&p.new_document_json)
                        .with_context(|| format!("{label}: new document"))?,
                    &label,
                )
            };
            Ok(PolicyView {
                kind: p.kind,
                name: p.name,
                outcome,
                current_version: p.current_version,
                new_version: p.new_version,
                diff,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let proxies = response
        .proxies
        .into_iter()
        .map(|p| ProxyView {
            node_id: p.node_id,
            cluster: p.cluster,
            resources: p
                .resources
                .into_iter()
                .map(|r| ResourceView {
                    name: r.name,
                    current_version: r.current_version,
                    new_version: r.new_version,
                    current_policies: r.current_policies,
                    new_policies: r.new_policies,
                })
                .collect(),
        })
        .collect();
    Ok(DiffView { policies, proxies })
}

/// A document's canonical JSON as YAML; empty for none.
fn yaml(json: &str) -> anyhow::Result<String> {
    if json.is_empty() {
        return Ok(String::new());
    }
    let value: Value =
        serde_json::from_str(json).context("the control plane sent unreadable JSON")?;
    Ok(serde_yaml::to_string(&value)?)
}

/// A unified diff (3 lines of context) of `old` and `new`, headed with `label`.
fn unified(old: &str, new: &str, label: &str) -> String {
    let diff = TextDiff::from_lines(old, new);
    let mut out = format!("--- {label} (stored)\n+++ {label} (applied)\n");
    for group in diff.grouped_ops(3) {
        for op in group {
            for change in diff.iter_changes(&op) {
                let sign = match change.tag() {
                    ChangeTag::Delete => '-',
                    ChangeTag::Insert => '+',
                    ChangeTag::Equal => ' ',
                };
                out.push(sign);
                out.push_str(change.value());
                if change.missing_newline() {
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// One line per policy with its diff, then the proxies that would get a new version.
fn render(view: &DiffView) -> String {
    let mut out = String::new();
    for p in &view.policies {
        out.push_str(&format!(
            "{}/{} {}\n",
            p.kind.to_ascii_lowercase(),
            output::terminal_safe(&p.name),
            p.outcome
        ));
        out.push_str(&output::terminal_safe_lines(&p.diff));
    }
    if view.proxies.is_empty() {
        out.push_str("\nNo connected proxy would get a new version.\n");
        return out;
    }
    out.push_str(&format!(
        "\nConnected proxies that would get a new version ({}):\n",
        view.proxies.len()
    ));
    let list = |names: &[String]| {
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(",")
        }
    };
    for p in &view.proxies {
        for r in &p.resources {
            out.push_str(&format!(
                "  {} ({}) {}: {} -> {}\n",
                output::terminal_safe(&p.node_id),
                output::terminal_safe(&p.cluster),
                output::terminal_safe(&r.name),
                output::terminal_safe(&list(&r.current_policies)),
                output::terminal_safe(&list(&r.new_policies)),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(rate: u32) -> String {
        format!(
            r#"{{"apiVersion":"meshwarden.dev/v1alpha1","kind":"TracePolicy","metadata":{{"name":"t"}},"spec":{{"formats":["w3c"],"samplingPercentage":{rate}}}}}"#
        )
    }

    #[test]
    fn renders_outcomes_the_changed_lines_and_the_proxies() {
        let response = pb::DiffResponse {
            policies: vec![
                pb::PolicyDiff {
                    kind: "TracePolicy".into(),
                    name: "t".into(),
                    outcome: pb::apply_result::Outcome::Updated.into(),
                    current_document_json: doc(10),
                    new_document_json: doc(20),
                    current_version: "a".into(),
                    new_version: "b".into(),
                },
                pb::PolicyDiff {
                    kind: "TracePolicy".into(),
                    name: "same".into(),
                    outcome: pb::apply_result::Outcome::Unchanged.into(),
                    ..Default::default()
                },
            ],
            proxies: vec![pb::ProxyDiff {
                node_id: "edge-1".into(),
                cluster: "shop".into(),
                resources: vec![pb::ResourceDiff {
                    name: "meshwarden.trace".into(),
                    current_version: "x".into(),
                    new_version: "y".into(),
                    current_policies: vec!["t".into()],
                    new_policies: vec!["t".into()],
                }],
            }],
            generation: 3,
        };
        let out = render(&view(response).unwrap());
        assert!(
            out.starts_with(
                "tracepolicy/t changed\n--- tracepolicy/t (stored)\n+++ tracepolicy/t (applied)\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("\n-  samplingPercentage: 10\n+  samplingPercentage: 20\n"),
            "{out}"
        );
        assert!(out.contains("   - w3c\n"), "context lines are kept: {out}");
        assert!(out.contains("tracepolicy/same unchanged\n"), "{out}");
        assert!(out.ends_with("Connected proxies that would get a new version (1):\n  edge-1 (shop) meshwarden.trace: t -> t\n"), "{out}");
    }

    #[test]
    fn a_created_policy_is_all_additions() {
        let d = unified("", &yaml(&doc(5)).unwrap(), "tracepolicy/t");
        assert!(d.lines().skip(2).all(|l| l.starts_with('+')), "{d}");
    }
}
