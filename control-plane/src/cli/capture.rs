//! `meshwarden capture`: the requests proxies capture, one line each, as they happen.

use super::{client, output, Output};
use crate::api::pb;
use serde_json::json;

/// `capture` arguments.
#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// Only this proxy's requests (node id).
    #[arg(long)]
    pub proxy: Option<String>,
    /// Only this CapturePolicy's requests.
    #[arg(long)]
    pub policy: Option<String>,
    /// Most held summaries shown before the live ones (0: all the control plane holds).
    #[arg(long, default_value_t = 0)]
    pub backlog: u32,
    /// `table`: one line per request; `json` (or `yaml`): one JSON object per line.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Streams summaries until the control plane ends the stream or the reader goes away.
pub async fn run(server: &str, args: CaptureArgs) -> anyhow::Result<()> {
    let mut stream = client::capture(server)
        .await?
        .watch(pb::CaptureWatchRequest {
            proxy: args.proxy.unwrap_or_default(),
            policy: args.policy.unwrap_or_default(),
            backlog: args.backlog,
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    if args.output == Output::Table {
        output::println(&format!(
            "{:<12} {:<20} {:<7} {:>3} {:>9} {:<40} {:<21} {:<32}",
            "TIME", "PROXY", "METHOD", "ST", "DURATION", "PATH", "UPSTREAM", "TRACE"
        ))?;
    }
    while let Some(r) = stream.message().await.map_err(client::status_error)? {
        let line = match args.output {
            Output::Table => table_line(&r),
            Output::Json | Output::Yaml => to_json(&r).to_string(),
        };
        output::println(&output::terminal_safe(&line))?;
    }
    Ok(())
}

/// One summary as a JSON object (what `-o json` prints per line).
pub fn to_json(r: &pb::CaptureRecord) -> serde_json::Value {
    let headers: Vec<_> = r
        .headers
        .iter()
        .map(|h| json!({"name": h.name, "value": h.value, "response": h.response}))
        .collect();
    json!({
        "proxy": r.node_id,
        "policy": r.policy,
        "startUnixNanos": r.start_unix_nanos,
        "durationNanos": r.duration_nanos,
        "method": r.method,
        "authority": r.authority,
        "path": r.path,
        "status": r.status,
        "reset": r.reset,
        "upstreamHost": r.upstream_host,
        "upstreamCluster": r.upstream_cluster,
        "traceId": r.trace_id,
        "requestBytes": r.request_bytes,
        "responseBytes": r.response_bytes,
        "headers": headers,
    })
}

fn table_line(r: &pb::CaptureRecord) -> String {
    let status = if r.reset {
        "RST".to_string()
    } else {
        r.status.to_string()
    };
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{:<12} {:<20} {:<7} {:>3} {:>7.1}ms {:<40} {:<21} {:<32}",
        time(r.start_unix_nanos),
        dash(&r.node_id),
        r.method,
        status,
        r.duration_nanos as f64 / 1e6,
        r.path,
        dash(&r.upstream_host),
        dash(&r.trace_id),
    )
}

/// The UTC time of day of Unix nanoseconds, `HH:MM:SS.mmm` (a live tail needs no date).
fn time(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000 % 86_400;
    let millis = unix_nanos / 1_000_000 % 1000;
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "00:00:00.000");
        assert_eq!(time(1_700_000_000_123_000_000), "22:13:20.123");
    }

    #[test]
    fn a_line_per_request() {
        let r = pb::CaptureRecord {
            node_id: "n1".into(),
            method: "GET".into(),
            path: "/items".into(),
            status: 200,
            trace_id: "ab".into(),
            ..Default::default()
        };
        let line = table_line(&r);
        assert!(line.contains("n1") && line.contains("/items") && line.contains("200"));
        let j = to_json(&r);
        assert_eq!(j["path"], "/items");
        assert_eq!(j["traceId"], "ab");
    }
}
