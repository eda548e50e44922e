//! `meshwarden status`: connected proxies and, per filter, the accepted version and the
//! last NACK; then each proxy's circuit breakers that are not closed.

use super::{client, output, table, Output, StatusArgs};
use crate::api::pb;
use serde::Serialize;
use std::collections::BTreeMap;

/// JSON view of the status (`status -o json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusView {
    proxies: Vec<ProxyView>,
}

/// What `status -o json|yaml` prints: the proxies and the halts in force.
#[derive(Debug, Serialize)]
struct StatusOutput {
    #[serde(flatten)]
    status: StatusView,
    halts: Vec<super::halt::HaltView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyView {
    node_id: String,
    /// The control-plane replica it is connected to (replicas on etcd only).
    #[serde(skip_serializing_if = "String::is_empty")]
    replica: String,
    cluster: String,
    labels: BTreeMap<String, String>,
    protocol: String,
    transport: String,
    connected: bool,
    connected_at_unix_ms: i64,
    disconnected_at_unix_ms: i64,
    filters: Vec<FilterView>,
    /// Breakers not closed, as the proxy last reported them.
    open_breakers: Vec<BreakerView>,
    /// How many, including any the proxy left out of its report.
    open_breaker_count: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BreakerView {
    policy: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    descriptor: String,
    state: String,
    since_unix_ms: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FilterView {
    name: String,
    sent_version: String,
    accepted_version: String,
    nacked_version: String,
    last_error: String,
    last_nack_at_unix_ms: i64,
    sent_at_unix_ms: i64,
    accepted_at_unix_ms: i64,
    accepted_policies: Vec<String>,
}

impl FilterView {
    /// The latest response for this resource was rejected (a NACK newer than any ACK).
    fn rejecting(&self) -> bool {
        !self.nacked_version.is_empty()
            && (self.accepted_version.is_empty()
                || self.last_nack_at_unix_ms >= self.accepted_at_unix_ms)
    }
}

impl From<pb::ProxyStatus> for ProxyView {
    fn from(p: pb::ProxyStatus) -> Self {
        Self {
            node_id: p.node_id,
            replica: p.replica,
            cluster: p.cluster,
            labels: p.labels.into_iter().collect(),
            protocol: p.protocol,
            transport: p.transport,
            connected: p.connected,
            connected_at_unix_ms: p.connected_at_unix_ms,
            disconnected_at_unix_ms: p.disconnected_at_unix_ms,
            filters: p
                .filters
                .into_iter()
                .map(|f| FilterView {
                    name: f.name,
                    sent_version: f.sent_version,
                    accepted_version: f.accepted_version,
                    nacked_version: f.nacked_version,
                    last_error: f.last_error,
                    last_nack_at_unix_ms: f.last_nack_at_unix_ms,
                    sent_at_unix_ms: f.sent_at_unix_ms,
                    accepted_at_unix_ms: f.accepted_at_unix_ms,
                    accepted_policies: f.accepted_policies,
                })
                .collect(),
            open_breakers: p
                .open_breakers
                .into_iter()
                .map(|b| BreakerView {
                    policy: b.policy,
                    descriptor: b.descriptor,
                    state: b.state,
                    since_unix_ms: b.since_unix_ms,
                })
                .collect(),
            open_breaker_count: p.open_breaker_count,
        }
    }
}

/// One line per breaker not closed: `BREAKER <node> <policy>[<descriptor>] open (12s)`.
fn breaker_lines(view: &StatusView) -> String {
    let mut out = String::new();
    for p in &view.proxies {
        for b in &p.open_breakers {
            let descriptor = if b.descriptor.is_empty() {
                String::new()
            } else {
                format!("[{}]", b.descriptor)
            };
            let since = i64::try_from(b.since_unix_ms).unwrap_or(0);
            let age = if since > 0 {
                format!(" ({})", table::age(since))
            } else {
                String::new()
            };
            // Node, policy and descriptor come from the proxy: shown escaped.
            out.push_str(&format!(
                "BREAKER {} {}{} {}{age}\n",
                output::terminal_safe(&p.node_id),
                output::terminal_safe(&b.policy),
                output::terminal_safe(&descriptor),
                output::terminal_safe(&b.state),
            ));
        }
        let more = (p.open_breaker_count as usize).saturating_sub(p.open_breakers.len());
        if more > 0 {
            out.push_str(&format!(
                "BREAKER {} ... and {more} more not closed\n",
                output::terminal_safe(&p.node_id)
            ));
        }
    }
    out
}

/// Prints the status of every proxy the control plane knows.
pub async fn run(server: &str, args: StatusArgs) -> anyhow::Result<()> {
    let response = client::proxies(server)
        .await?
        .list_proxies(pb::ListProxiesRequest {})
        .await
        .map_err(client::status_error)?
        .into_inner();
    let halts = super::halt::list(server).await?;
    let view = StatusView {
        proxies: response.proxies.into_iter().map(ProxyView::from).collect(),
    };
    if args.output == Output::Table && !halts.is_empty() {
        output::print(&format!("{}\n", super::halt::render(&halts)))?;
    }
    let full = |status| StatusOutput {
        status,
        halts: halts.iter().map(super::halt::HaltView::from).collect(),
    };
    match args.output {
        Output::Json => output::println(&serde_json::to_string_pretty(&full(view))?),
        Output::Yaml => output::print(&serde_yaml::to_string(&full(view))?),
        Output::Table if view.proxies.is_empty() => {
            output::eprintln("No proxies known.");
            Ok(())
        }
        Output::Table => output::print(&render(&view)),
    }
}

/// The PROTOCOL column: the protocol, after the service when it is not ADS (`ecds/delta`).
fn protocol_column(transport: &str, protocol: &str) -> String {
    match (transport, protocol) {
        (_, "") => "-".to_string(),
        ("" | "ads", p) => p.to_string(),
        (t, p) => format!("{t}/{p}"),
    }
}

/// One row per proxy and filter, then the messages of NACKs not yet superseded by an ACK.
fn render(view: &StatusView) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut rows = Vec::new();
    let mut nacks = String::new();
    // Replicas on etcd: a REPLICA column says which one each proxy is connected to.
    let replicas = view.proxies.iter().any(|p| !p.replica.is_empty());
    for p in &view.proxies {
        let connected = match (p.connected, p.connected_at_unix_ms) {
            (true, at) if at > 0 => format!("yes ({})", table::age(at)),
            (true, _) => "yes".to_string(),
            (false, _) if p.disconnected_at_unix_ms > 0 => {
                format!("no ({})", table::age(p.disconnected_at_unix_ms))
            }
            (false, _) => "no".to_string(),
        };
        let mut head = vec![p.node_id.clone()];
        if replicas {
            head.push(dash(&p.replica));
        }
        head.extend([
            dash(&p.cluster),
            protocol_column(&p.transport, &p.protocol),
            connected,
        ]);
        let head_len = head.len();
        if p.filters.is_empty() {
            head.extend(["-", "-", "-", "-"].map(String::from));
            rows.push(head);
            continue;
        }
        for f in &p.filters {
            let filter = f.name.strip_prefix("meshwarden.").unwrap_or(&f.name);
            let mut row = std::mem::replace(&mut head, vec![String::new(); head_len]);
            let rejected = if f.rejecting() { &f.nacked_version } else { "" };
            row.extend([
                filter.to_string(),
                dash(&f.accepted_version),
                dash(&f.accepted_policies.join(",")),
                dash(rejected),
            ]);
            rows.push(row);
            if f.rejecting() {
                let when = match f.last_nack_at_unix_ms {
                    at if at > 0 => format!(" ({} ago)", table::age(at)),
                    _ => String::new(),
                };
                // The message comes from the proxy: shown escaped, on one line.
                nacks.push_str(&format!(
                    "NACK {} {} version {}{when}: {}\n",
                    output::terminal_safe(&p.node_id),
                    output::terminal_safe(&f.name),
                    output::terminal_safe(&dash(&f.nacked_version)),
                    output::terminal_safe(f.last_error.trim())
                ));
            }
        }
    }
    let mut columns = vec!["NODE"];
    if replicas {
        columns.push("REPLICA");
    }
    columns.extend([
        "CLUSTER",
        "PROTOCOL",
        "CONNECTED",
        "FILTER",
        "ACCEPTED",
        "POLICIES",
        "NACKED",
    ]);
    let mut out = table::render(&columns, &rows);
    if !nacks.is_empty() {
        out.push('\n');
        out.push_str(&nacks);
    }
    let breakers = breaker_lines(view);
    if !breakers.is_empty() {
        out.push('\n');
        out.push_str(&breakers);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(name: &str, accepted: &str, nacked: &str, error: &str) -> pb::FilterStatus {
        pb::FilterStatus {
            name: name.into(),
            sent_version: accepted.into(),
            accepted_version: accepted.into(),
            nacked_version: nacked.into(),
            last_error: error.into(),
            last_nack_at_unix_ms: if nacked.is_empty() { 0 } else { 2 },
            accepted_at_unix_ms: 1,
            accepted_policies: vec!["p1".into(), "p2".into()],
            ..Default::default()
        }
    }

    fn proxy() -> pb::ProxyStatus {
        pb::ProxyStatus {
            node_id: "edge-1".into(),
            cluster: "shop".into(),
            labels: [("zone".to_string(), "eu".to_string())].into(),
            protocol: "delta".into(),
            transport: "ads".into(),
            connected: true,
            connected_at_unix_ms: 0,
            filters: vec![
                filter("meshwarden.trace", "v1", "v2", "bad module"),
                filter("meshwarden.fault", "v3", "", ""),
            ],
            disconnected_at_unix_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn open_breakers_are_listed_after_the_table() {
        let mut p = proxy();
        assert!(!render(&StatusView {
            proxies: vec![p.clone().into()]
        })
        .contains("BREAKER"));
        let breaker = |descriptor: &str, state: &str| pb::OpenBreaker {
            policy: "checkout".into(),
            descriptor: descriptor.into(),
            state: state.into(),
            since_unix_ms: 1,
        };
        p.open_breakers = vec![breaker("", "open"), breaker("tenant-\u{1b}a", "half_open")];
        p.open_breaker_count = 5;
        let view = StatusView {
            proxies: vec![p.into()],
        };
        let out = render(&view);
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("BREAKER")).collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("BREAKER edge-1 checkout open ("),
            "{out}"
        );
        assert!(
            lines[1].starts_with(r"BREAKER edge-1 checkout[tenant-\u{1b}a] half_open ("),
            "{out}"
        );
        assert_eq!(lines[2], "BREAKER edge-1 ... and 3 more not closed");
        let v = serde_json::to_value(&view).unwrap();
        assert_eq!(v["proxies"][0]["openBreakers"][0]["policy"], "checkout");
        assert_eq!(v["proxies"][0]["openBreakers"][1]["state"], "half_open");
        assert_eq!(v["proxies"][0]["openBreakerCount"], 5);
    }

    #[test]
    fn a_replica_column_appears_when_replicas_share_a_store() {
        let plain = render(&StatusView {
            proxies: vec![proxy().into()],
        });
        assert!(!plain.contains("REPLICA"), "{plain}");
        let mut on_b = proxy();
        on_b.replica = "cp-b".into();
        let replicated = render(&StatusView {
            proxies: vec![proxy().into(), on_b.into()],
        });
        let header = replicated.lines().next().unwrap();
        assert!(
            header.starts_with("NODE") && header.contains("REPLICA"),
            "{replicated}"
        );
        assert!(
            replicated
                .lines()
                .any(|l| l.contains("edge-1") && l.contains("cp-b")),
            "{replicated}"
        );
    }

    #[test]
    fn the_protocol_column_names_a_standalone_service() {
        let mut p = proxy();
        let ads = render(&StatusView {
            proxies: vec![p.clone().into()],
        });
        assert!(ads.lines().nth(1).unwrap().contains(" delta "), "{ads}");
        p.transport = "ecds".into();
        let out = render(&StatusView {
            proxies: vec![p.into()],
        });
        assert!(out.lines().nth(1).unwrap().contains("ecds/delta"), "{out}");
    }

    #[test]
    fn superseded_nacks_are_not_shown_as_current() {
        let mut p = proxy();
        p.filters[0].accepted_at_unix_ms = 3;
        let out = render(&StatusView {
            proxies: vec![p.into()],
        });
        assert!(!out.contains("NACK "), "{out}");
        assert!(!out.lines().nth(1).unwrap().contains("v2"), "{out}");
    }

    #[test]
    fn json_uses_camel_case_fields() {
        let view = StatusView {
            proxies: vec![proxy().into()],
        };
        let v = serde_json::to_value(&view).unwrap();
        let p = &v["proxies"][0];
        assert_eq!(p["nodeId"], "edge-1");
        assert_eq!(p["connected"], true);
        assert_eq!(p["labels"]["zone"], "eu");
        assert_eq!(p["filters"][0]["name"], "meshwarden.trace");
        assert_eq!(p["filters"][0]["acceptedVersion"], "v1");
        assert_eq!(p["filters"][0]["nackedVersion"], "v2");
        assert_eq!(p["filters"][0]["lastError"], "bad module");
    }

    #[test]
    fn table_shows_one_row_per_filter_and_the_nack() {
        let out = render(&StatusView {
            proxies: vec![proxy().into()],
        });
        let lines: Vec<_> = out.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{out}");
        assert!(
            lines[1].starts_with("edge-1") && lines[1].contains("trace") && lines[1].contains("v2"),
            "{out}"
        );
        assert!(lines[1].contains("p1,p2"), "{out}");
        assert!(lines[2].trim_start().starts_with("fault"), "{out}");
        let nack = out
            .lines()
            .find(|l| l.starts_with("NACK "))
            .expect("NACK line");
        assert!(
            nack.starts_with("NACK edge-1 meshwarden.trace version v2 ("),
            "{out}"
        );
        assert!(nack.ends_with(" ago): bad module"), "{out}");
    }

    #[test]
    fn proxy_text_cannot_drive_the_terminal() {
        let mut p = proxy();
        p.node_id = "edge-\u{1b}[2J".into();
        p.filters[0].last_error = "bad\u{1b}[31m module\nsecond line\u{9b}".into();
        let view = StatusView {
            proxies: vec![p.into()],
        };
        let out = render(&view);
        assert!(
            !out.chars().any(|c| c == '\u{1b}' || c == '\u{9b}'),
            "{out:?}"
        );
        let nack = out.lines().find(|l| l.starts_with("NACK ")).unwrap();
        assert!(
            nack.starts_with(r"NACK edge-\u{1b}[2J meshwarden.trace version v2 ("),
            "{nack}"
        );
        assert!(
            nack.ends_with(r"bad\u{1b}[31m module\nsecond line\u{9b}"),
            "{nack}"
        );
        assert!(
            out.lines().nth(1).unwrap().starts_with(r"edge-\u{1b}[2J"),
            "{out}"
        );
        // JSON stays exact (its own escaping is safe for terminals); YAML escapes them too.
        let json = serde_json::to_string_pretty(&view).unwrap();
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back["proxies"][0]["filters"][0]["lastError"],
            "bad\u{1b}[31m module\nsecond line\u{9b}"
        );
        assert!(!json.contains('\u{1b}'), "{json}");
        let yaml = serde_yaml::to_string(&view).unwrap();
        assert!(!yaml.contains('\u{1b}'), "{yaml}");
    }
}
