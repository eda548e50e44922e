//! Limits under hostile input (issue 11): memory stays bounded when many large applies
//! arrive at once and when large regular expressions come and go, and the CLI refuses
//! oversized or pathological input fast, without panicking on a closed pipe.
//!
//! Memory is read from `/proc/<pid>/status`: `VmHWM` (the peak resident set) and `VmRSS`.
//! The bounds are generous (about twice what was measured, see the constants); they catch
//! the unbounded growth of the issue (1.7 GB for the control plane, 0.5–1.2 GB for Envoy),
//! not small regressions.

use meshwarden_common::limits::{
    MAX_APPLY_REQUEST_BYTES, MAX_DOCUMENT_BYTES, MAX_REGEX_PROGRAM_BYTES,
};
use meshwarden_cp::api::pb::policy_service_client::PolicyServiceClient;
use meshwarden_cp::api::pb::{ApplyRequest, DeleteRequest, ListRequest};
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;

/// Peak resident memory the control plane may reach while 40 clients apply near-limit
/// documents and 40 send requests of the issue's 3.9 MB at once (measured: 190-270 MB, of
/// which about 35 MB is the applied documents themselves; before the limits, 1.73 GB).
const CONTROL_PLANE_PEAK_MB: u64 = 400;
/// How much an Envoy (2 workers, so 3 VMs per filter) may grow, at its peak and after
/// everything was deleted, while 100 policies with 200 of the largest regular expressions
/// are applied and deleted one by one (measured: 40-80 MB, also with the CPU saturated;
/// before the limits, 100 such policies took an Envoy to 468 MB, and 1.16 GB once deleted).
const ENVOY_GROWTH_MB: u64 = 160;

/// VmRSS once it stopped moving (three readings 500 ms apart within 2 MB; at most 20 s).
async fn settled_rss_mb(pid: u32) -> u64 {
    let mut last = Vec::new();
    for _ in 0..40 {
        last.push(proc_mb(pid, "VmRSS"));
        if let [.., a, b, c] = last[..] {
            if a.max(b).max(c) - a.min(b).min(c) <= 2 {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    *last.last().expect("readings")
}

/// A field of `/proc/<pid>/status` in MiB (`VmRSS`, `VmHWM`).
fn proc_mb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb / 1024
}

/// A TracePolicy whose labels make its JSON about `bytes` long.
fn large_trace_policy(name: &str, bytes: usize) -> String {
    let value = "v".repeat(1000);
    let labels: serde_json::Map<String, Value> = (0..bytes / 1010)
        .map(|i| (format!("k{i:05}"), json!(value)))
        .collect();
    json!({"apiVersion": "meshwarden.dev/v1alpha1", "kind": "TracePolicy",
        "metadata": {"name": name, "labels": labels}, "spec": {}})
    .to_string()
}

async fn client(
    cp: &ControlPlane,
) -> anyhow::Result<PolicyServiceClient<tonic::transport::Channel>> {
    Ok(
        PolicyServiceClient::connect(format!("http://127.0.0.1:{}", cp.grpc_port))
            .await?
            .max_decoding_message_size(usize::MAX),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_large_applies_keep_the_control_plane_bounded() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let pid = cp.pid();
    let start_mb = proc_mb(pid, "VmRSS");

    // The issue's input: 40 clients at once, each with a 3.9 MB request (4 documents just
    // under the document limit). Each is refused by size before it is read.
    let doc = large_trace_policy("x", MAX_DOCUMENT_BYTES - 60_000);
    assert!(doc.len() < MAX_DOCUMENT_BYTES);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = client(&cp).await?;
        let docs: Vec<String> = (0..4)
            .map(|j| doc.replace(r#""name":"x""#, &format!(r#""name":"big-{i}-{j}""#)))
            .collect();
        assert!(docs.iter().map(String::len).sum::<usize>() > 3_900_000);
        tasks.push(tokio::spawn(async move {
            c.apply(ApplyRequest {
                documents_json: docs,
                dry_run: false,
                ..Default::default()
            })
            .await
        }));
    }
    for t in tasks {
        let err = t
            .await?
            .expect_err("a 3.9 MB request is over the request limit");
        assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
        assert!(
            err.message().contains(&MAX_APPLY_REQUEST_BYTES.to_string()),
            "{}",
            err.message()
        );
    }
    let after_huge_mb = proc_mb(pid, "VmHWM");

    // 40 clients at once, each applying one document just under the limit, 5 of them just
    // over it: each gets success, a clear size error, or RESOURCE_EXHAUSTED (busy).
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut c = client(&cp).await?;
        let size = if i % 8 == 7 {
            MAX_DOCUMENT_BYTES + 10_000
        } else {
            MAX_DOCUMENT_BYTES - 30_000
        };
        let doc = large_trace_policy(&format!("large-{i:02}"), size);
        tasks.push(tokio::spawn(async move {
            let over = doc.len() > MAX_DOCUMENT_BYTES;
            let r = c
                .apply(ApplyRequest {
                    documents_json: vec![doc],
                    dry_run: false,
                    ..Default::default()
                })
                .await;
            (over, r)
        }));
    }
    let (mut applied, mut busy) = (0, 0);
    for t in tasks {
        match t.await? {
            (false, Ok(_)) => applied += 1,
            (true, Err(e)) if e.code() == Code::InvalidArgument => assert!(
                e.message()
                    .contains("more than the limit of 1048576 bytes per policy document"),
                "{}",
                e.message()
            ),
            (false, Err(e)) if e.code() == Code::ResourceExhausted => {
                assert!(
                    e.message()
                        .contains("at most 4 apply/delete requests at once"),
                    "{}",
                    e.message()
                );
                busy += 1;
            }
            (over, other) => panic!("unexpected outcome (over the limit: {over}): {other:?}"),
        }
    }
    assert_eq!(applied + busy, 35);
    assert!(applied > 0, "no apply got through");

    // Still serving, with what was applied.
    let list = client(&cp)
        .await?
        .list(ListRequest::default())
        .await?
        .into_inner();
    assert_eq!(list.policies.len(), applied);
    let peak_mb = proc_mb(pid, "VmHWM");
    let now_mb = proc_mb(pid, "VmRSS");
    eprintln!(
        "control plane RSS: start {start_mb} MB, peak after the 3.9 MB requests {after_huge_mb} MB, peak {peak_mb} MB, after {now_mb} MB; {applied} applied, {busy} busy"
    );
    assert!(
        peak_mb < CONTROL_PLANE_PEAK_MB,
        "control plane peaked at {peak_mb} MB (bound {CONTROL_PLANE_PEAK_MB} MB)"
    );
    Ok(())
}

/// A path regex whose compiled program is just under the limit (32,400 of 32,768 bytes;
/// `{820}` is over it), distinct per policy.
fn largest_path_regex(i: usize) -> String {
    format!("/p{i}/[a-z]{{800}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_churn_keeps_envoy_memory_bounded() -> anyhow::Result<()> {
    const POLICIES: usize = 100;
    // The regex is the largest of its shape the limit allows.
    let doc = |i: usize, path: &str| {
        json!({"apiVersion": "meshwarden.dev/v1alpha1", "kind": "TracePolicy",
            "metadata": {"name": format!("regex-{i:03}")},
            "spec": {"match": {"path": {"regex": path},
                "headers": [{"name": "x-user", "regex": format!("u{i}-[a-z0-9]{{660}}")}]}}})
        .to_string()
    };
    let cp = ControlPlane::start().await?;
    let mut api = client(&cp).await?;
    let too_big = api
        .apply(ApplyRequest {
            documents_json: vec![doc(0, "/p0/[a-z]{820}")],
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect_err("a regex over the program limit");
    assert!(
        too_big.message().contains(&format!(
            "spec.match.path.regex: compiled program is larger than the limit of {MAX_REGEX_PROGRAM_BYTES} bytes"
        )),
        "{}",
        too_big.message()
    );

    let upstream = EchoUpstream::start().await?;
    let envoy = Envoy::start(
        &cp,
        upstream.addr.port(),
        EnvoyOptions {
            node_id: "regex-churn".into(),
            ..Default::default()
        },
    )
    .await?;
    let pid = envoy.pid();
    // Envoy keeps compiling the filter modules (V8 tier-up) for a while after it is live;
    // measure from when that settled.
    let start_mb = settled_rss_mb(pid).await;
    let cli = cp.cli();
    let accepted = |n: usize| {
        let cli = cli.clone();
        async move {
            wait_until(
                Duration::from_secs(120),
                &format!("{n} policies accepted"),
                || {
                    let status = cli.status_json();
                    async move {
                        let proxy = status["proxies"]
                            .as_array()?
                            .iter()
                            .find(|p| p["nodeId"] == "regex-churn" && p["connected"] == true)?
                            .clone();
                        let f = proxy["filters"]
                            .as_array()?
                            .iter()
                            .find(|f| f["name"] == crate::support::FILTER)?
                            .clone();
                        let count = f["acceptedPolicies"].as_array()?.len();
                        (count == n && f["acceptedVersion"] == f["sentVersion"]).then_some(())
                    }
                },
            )
            .await
        }
    };

    // Up: ten applies of ten policies, each with two of the largest regexes (200 in all,
    // under the 256 per kind).
    for batch in 0..POLICIES / 10 {
        let docs = (batch * 10..batch * 10 + 10)
            .map(|i| doc(i, &largest_path_regex(i)))
            .collect();
        api.apply(ApplyRequest {
            documents_json: docs,
            dry_run: false,
            ..Default::default()
        })
        .await?;
    }
    accepted(POLICIES).await?;
    let full_mb = proc_mb(pid, "VmRSS");
    // A request matching one of them still goes through the filter.
    let path = format!("/p7/{}", "a".repeat(800));
    let user = format!("u7-{}", "b".repeat(660));
    let resp = envoy.get(&path, &[("x-user", user.as_str())]).await?;
    assert!(resp.status().is_success());
    let seen = upstream.last_with_path(&path).expect("upstream saw it");
    assert!(
        seen.header("traceparent").is_some(),
        "policy regex-007 applied"
    );

    // Down: delete them one by one, each a new configuration, the next once the proxy
    // accepted it.
    let delete = |api: &mut PolicyServiceClient<tonic::transport::Channel>, i: usize| {
        let mut api = api.clone();
        async move {
            api.delete(DeleteRequest {
                kind: "TracePolicy".into(),
                name: format!("regex-{i:03}"),
            })
            .await
        }
    };
    for i in 0..POLICIES {
        delete(&mut api, i).await?;
        accepted(POLICIES - i - 1).await?;
    }
    let peak_mb = proc_mb(pid, "VmHWM");
    let end_mb = proc_mb(pid, "VmRSS");
    eprintln!(
        "envoy RSS: start {start_mb} MB, with {POLICIES} regex policies {full_mb} MB, peak {peak_mb} MB, after deleting them all {end_mb} MB"
    );
    assert!(
        peak_mb.saturating_sub(start_mb) < ENVOY_GROWTH_MB,
        "Envoy grew from {start_mb} MB to a peak of {peak_mb} MB (bound: {ENVOY_GROWTH_MB} MB more)"
    );
    assert!(
        end_mb.saturating_sub(start_mb) < ENVOY_GROWTH_MB,
        "Envoy kept {end_mb} MB after every policy was deleted, from {start_mb} MB (bound: {ENVOY_GROWTH_MB} MB more)"
    );
    assert!(envoy.log().contains("configured with 0 policies"));

    // Churn: up again, then every delete at once, as a script would. The proxy ends with
    // none. (Memory is reported, not bounded: the control plane sends each new version
    // without waiting for the previous one's ACK, and Envoy holds every configuration it
    // has queued, so a burst of versions costs more when the proxy is slow; measured
    // 50-270 MB over the start.)
    for batch in 0..POLICIES / 10 {
        let docs = (batch * 10..batch * 10 + 10)
            .map(|i| doc(i, &largest_path_regex(i + 1000)))
            .collect();
        api.apply(ApplyRequest {
            documents_json: docs,
            dry_run: false,
            ..Default::default()
        })
        .await?;
    }
    accepted(POLICIES).await?;
    for i in 0..POLICIES {
        delete(&mut api, i).await?;
    }
    accepted(0).await?;
    assert_eq!(envoy.pid(), pid);
    assert!(envoy.get("/after-churn", &[]).await?.status().is_success());
    eprintln!(
        "envoy RSS after a burst of {POLICIES} deletes: peak {} MB, now {} MB",
        proc_mb(pid, "VmHWM"),
        proc_mb(pid, "VmRSS")
    );
    Ok(())
}

#[tokio::test]
async fn cli_exits_quietly_when_its_reader_goes_away() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let mut api = client(&cp).await?;
    // More output than a pipe buffers (64 KiB), so the CLI is still writing when the
    // reader leaves.
    let docs = (0..40)
        .map(|i| large_trace_policy(&format!("p{i:02}"), 4_000))
        .collect();
    api.apply(ApplyRequest {
        documents_json: docs,
        dry_run: false,
        ..Default::default()
    })
    .await?;
    let bin = meshwarden_e2e::paths::meshwarden_bin();
    for args in [
        &["get", "-o", "json"][..],
        &["get", "-o", "yaml"],
        &["get", "trace"],
    ] {
        // Like `meshwarden get -o json | head -1`: read one line, then close the pipe.
        let mut child = Command::new(&bin)
            .arg("--server")
            .arg(cp.cli().server)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut first)?;
        assert!(!first.is_empty(), "{args:?} printed nothing");
        // The reader is dropped here: the CLI's next write fails with EPIPE.
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} should exit quietly: {stderr}");
        let code = out.status.code();
        // `get trace` (a table) may fit the pipe whole; the others cannot.
        assert!(
            code == Some(141) || (args[1] == "trace" && code == Some(0)),
            "{args:?} exited with {:?}",
            out.status
        );
    }
    Ok(())
}

#[tokio::test]
async fn cli_refuses_huge_and_deeply_nested_files_fast() -> anyhow::Result<()> {
    // No control plane: the CLI must refuse before it connects.
    let cli = meshwarden_e2e::Cli {
        server: "http://127.0.0.1:9".into(),
        global_args: Vec::new(),
    };
    let dir = tempfile::tempdir()?;

    let huge = dir.path().join("huge.yaml");
    std::fs::File::create(&huge)?.set_len(100 << 20)?;
    let started = Instant::now();
    let out = cli.run(&["apply", "-f", &huge.display().to_string()]);
    assert!(!out.success);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: {}: 104857600 bytes, more than the limit of 4194304 bytes per input file; split it into smaller files (policy documents are at most 1048576 bytes each) and apply them one at a time",
            huge.display()
        )
    );

    let deep = dir.path().join("deep.yaml");
    std::fs::write(
        &deep,
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    )?;
    let out = cli.run(&["apply", "-f", &deep.display().to_string()]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("deep.yaml: line 1: nested deeper than 64 levels"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}
