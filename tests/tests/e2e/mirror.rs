//! Traffic mirroring: copies reach the target with the documented changes, sampling and the
//! rate cap hold, unsafe methods and large bodies are skipped, a dead, black-holed or slow
//! target never hurts the primary, and diff mode tells matches from mismatches.

use meshwarden_e2e::{
    wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions, RecordedRequest,
};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MARKER: &str = "x-meshwarden-mirror";

/// A MirrorPolicy document.
fn mirror_policy(name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: meshwarden.dev/v1alpha1\nkind: MirrorPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// Control plane, Envoy in front of `primary`, and the policies applied.
struct Stack {
    primary: EchoUpstream,
    cp: ControlPlane,
    envoy: Envoy,
}

async fn stack() -> anyhow::Result<Stack> {
    let cp = ControlPlane::start().await?;
    let primary = EchoUpstream::start().await?;
    let envoy = Envoy::start(&cp, primary.addr.port(), EnvoyOptions::default()).await?;
    Ok(Stack { primary, cp, envoy })
}

impl Stack {
    fn apply(&self, yaml: &str) {
        let out = self.cp.cli().apply_yaml(yaml);
        assert!(out.success, "apply failed: {}\n{}", out.stderr, out.stdout);
    }

    /// Sends GETs to `prefix/<n>` until `seen` reports a copy of one (the policy and its
    /// cluster have reached Envoy).
    async fn wait_for_copies(
        &self,
        prefix: &str,
        seen: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let n = AtomicUsize::new(0);
        let waited = wait_until(Duration::from_secs(20), "first mirrored copy", || {
            let path = format!("{prefix}/{}", n.fetch_add(1, Ordering::Relaxed));
            let (envoy, seen) = (&self.envoy, &seen);
            async move {
                let _ = envoy.get(&path, &[]).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
                seen(prefix).then_some(())
            }
        })
        .await;
        if let Err(e) = waited {
            anyhow::bail!(
                "{e}\n--- envoy log ---\n{}\n--- cp log ---\n{}",
                self.envoy.log(),
                self.cp.log()
            );
        }
        Ok(())
    }

    /// A filter stat for `policy` (0 if absent).
    async fn mirror_stat(&self, metric: &str, policy: &str) -> anyhow::Result<i64> {
        self.envoy.stat(&stat_name(metric, policy)).await
    }
}

/// The admin `/stats` name of a mirror filter counter for a policy.
fn stat_name(metric: &str, policy: &str) -> String {
    format!("wasmcustom.meshwarden_mirror_{metric}_total.policy.{policy}")
}

fn count_prefix(up: &EchoUpstream, prefix: &str) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .count()
}

/// Waits until `f()` stops changing for `quiet` (bounded by `max`), returns its last value.
async fn settle(max: Duration, quiet: Duration, f: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + max;
    let mut last = f();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = f();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    last
}

/// Runs `n` requests with `concurrency` tasks; returns each one's status (0 on error) and
/// latency.
async fn fire(
    envoy: &Envoy,
    n: usize,
    concurrency: usize,
    request: impl Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> Vec<(u16, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, request, client) = (next.clone(), request.clone(), envoy.client().clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break out;
                }
                let t0 = Instant::now();
                let status = match request(&client, i)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => 0,
                };
                out.push((status, t0.elapsed()));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("request task"));
    }
    all
}

/// Whether `k` successes in `n` trials are within the two-sided 99 % normal bound of `p`.
fn within_99(k: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 2.576 * sd + 1.0
}

fn header_names(body: &Value) -> Vec<String> {
    body["headers"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter_map(|h| h[0].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn copies_carry_method_path_body_and_headers_and_the_client_gets_the_primary_response(
) -> anyhow::Result<()> {
    let s = stack().await?;
    let shadow = EchoUpstream::start().await?;
    s.apply(&mirror_policy(
        "orders-shadow",
        &format!(
            r#"mirrors:
- target: {{host: "127.0.0.1:{}"}}
methods: [GET, POST]
removeHeaders: [authorization]
addHeaders: {{x-echo-status: "503", x-shadow: "yes"}}"#,
            shadow.addr.port()
        ),
    ));
    s.wait_for_copies("/warmup", |p| count_prefix(&shadow, p) > 0)
        .await?;

    let body = "order=42&note=mirror me";
    let resp = s
        .envoy
        .client()
        .post(s.envoy.url("/orders/42?dry=1"))
        .header("authorization", "Bearer secret")
        .header("cookie", "session=s3cr3t")
        .header("x-custom", "abc")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    // The client gets the primary's answer, not the mirror's 503.
    assert_eq!(resp.status().as_u16(), 200);
    let echoed: Value = resp.json().await?;
    assert_eq!(echoed["path"], "/orders/42");
    assert_eq!(echoed["bodyBytes"], body.len());
    assert!(!header_names(&echoed)
        .iter()
        .any(|h| h == MARKER || h == "x-shadow"));

    let copy: RecordedRequest = wait_until(Duration::from_secs(5), "copy of /orders/42", || {
        let c = shadow.last_with_path("/orders/42");
        async move { c }
    })
    .await?;
    let primary = s
        .primary
        .last_with_path("/orders/42")
        .expect("primary saw the request");
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.body, body.as_bytes());
    assert_eq!(copy.header("x-custom").as_deref(), Some("abc"));
    assert_eq!(
        copy.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(copy.header("content-length"), Some(body.len().to_string()));
    // Documented changes: -shadow host suffix, marker, added and removed headers.
    assert_eq!(
        copy.header("host"),
        Some(format!("127.0.0.1-shadow:{}", s.envoy.listen_port))
    );
    assert_eq!(copy.header(MARKER).as_deref(), Some("orders-shadow"));
    assert_eq!(copy.header("x-shadow").as_deref(), Some("yes"));
    assert!(copy.header_all("authorization").is_empty());
    // Credentials are dropped from copies by default (no `keepHeaders`).
    assert!(copy.header_all("cookie").is_empty());
    // The primary request is untouched.
    assert_eq!(
        primary.header("authorization").as_deref(),
        Some("Bearer secret")
    );
    assert!(primary.header_all(MARKER).is_empty());
    assert_eq!(primary.body, body.as_bytes());
    assert_eq!(
        primary.header("host"),
        Some(format!("127.0.0.1:{}", s.envoy.listen_port))
    );
    // Every other header the primary got, the copy got too, with the same value(s); the copy
    // has nothing else but the documented additions (and what Envoy adds to call-outs).
    assert_eq!(primary.header("cookie").as_deref(), Some("session=s3cr3t"));
    let changed = [
        "host",
        "authorization",
        "cookie",
        "x-envoy-expected-rq-timeout-ms",
    ];
    for (name, _) in &primary.headers {
        if !changed.contains(&name.as_str()) {
            assert_eq!(
                copy.header_all(name),
                primary.header_all(name),
                "header {name}"
            );
        }
    }
    let added = [MARKER, "x-shadow", "x-echo-status", "x-envoy-internal"];
    for (name, _) in &copy.headers {
        assert!(
            primary.headers.iter().any(|(n, _)| n == name) || added.contains(&name.as_str()),
            "unexpected header {name} on the copy"
        );
    }

    // The mirror's 503s count as errors; nothing else went wrong.
    let errors = wait_until(Duration::from_secs(5), "mirror error counted", || {
        let f = s.mirror_stat("errors", "orders-shadow");
        async move { f.await.ok().filter(|n| *n > 0) }
    })
    .await?;
    assert!(errors >= 1);
    assert!(s.mirror_stat("mirrored", "orders-shadow").await? >= 2);

    // Deleting the policy removes the generated cluster again (state-of-the-world ADS).
    let cluster = format!("meshwarden_mirror_127.0.0.1_{}", shadow.addr.port());
    assert!(has_cluster(&s.envoy, &cluster).await?);
    delete_and_wait_for_cluster_removal(&s, "orders-shadow", &cluster).await
}

#[tokio::test]
async fn percentages_hold_within_binomial_bounds_and_sticky_sampling_is_per_user(
) -> anyhow::Result<()> {
    let s = stack().await?;
    let (a, b) = (EchoUpstream::start().await?, EchoUpstream::start().await?);
    s.apply(&mirror_policy(
        "split",
        &format!(
            r#"match: {{path: {{prefix: /pct}}}}
mirrors:
- target: {{host: "127.0.0.1:{}"}}
  percentage: {{value: 25}}
- target: {{host: "127.0.0.1:{}"}}
  percentage: {{value: 60}}"#,
            a.addr.port(),
            b.addr.port()
        ),
    ));
    s.apply(&mirror_policy(
        "sticky",
        &format!(
            r#"match: {{path: {{prefix: /sticky}}}}
mirror: {{host: "127.0.0.1:{}"}}
mirrorPercentage: {{value: 50}}
sticky: {{header: x-user, seed: 11}}"#,
            a.addr.port()
        ),
    ));
    // 100 % of warm-up requests are not needed: any copy at either target proves readiness.
    s.wait_for_copies("/pct/warmup", |p| {
        count_prefix(&a, p) + count_prefix(&b, p) > 0
    })
    .await?;
    let (base_a, base_b) = (count_prefix(&a, "/pct/"), count_prefix(&b, "/pct/"));
    let before = s.mirror_stat("mirrored", "split").await?;

    let n = 2_000;
    let base = s.envoy.url("/pct/run");
    let results = fire(&s.envoy, n, 16, move |c, i| c.get(format!("{base}/{i}"))).await;
    assert!(
        results.iter().all(|(st, _)| *st == 200),
        "every primary request succeeds"
    );
    let got_a = settle(Duration::from_secs(10), Duration::from_millis(500), || {
        count_prefix(&a, "/pct/run/")
    })
    .await;
    let got_b = settle(Duration::from_secs(5), Duration::from_millis(300), || {
        count_prefix(&b, "/pct/run/")
    })
    .await;
    assert!(
        within_99(got_a, n, 0.25),
        "target a got {got_a} of {n} (25 %)"
    );
    assert!(
        within_99(got_b, n, 0.60),
        "target b got {got_b} of {n} (60 %)"
    );
    let mirrored = s.mirror_stat("mirrored", "split").await? - before;
    assert_eq!(
        mirrored as usize,
        got_a + got_b,
        "mirrored counter = copies received"
    );
    assert!(base_a + base_b > 0);

    // Sticky: each user is always in or always out.
    let users = 40;
    let per_user = 5;
    let base = s.envoy.url("/sticky");
    fire(&s.envoy, users * per_user, 8, move |c, i| {
        c.get(format!("{base}/{i}"))
            .header("x-user", format!("user-{}", i % users))
    })
    .await;
    settle(Duration::from_secs(5), Duration::from_millis(300), || {
        count_prefix(&a, "/sticky/")
    })
    .await;
    let mut in_users = 0;
    for u in 0..users {
        let copies = a
            .requests()
            .iter()
            .filter(|r| {
                r.path.starts_with("/sticky/") && r.header("x-user") == Some(format!("user-{u}"))
            })
            .count();
        assert!(
            copies == 0 || copies == per_user,
            "user-{u} got {copies} of {per_user} copies"
        );
        in_users += usize::from(copies == per_user);
    }
    assert!(
        (8..=32).contains(&in_users),
        "{in_users} of {users} users sampled at 50 %"
    );
    Ok(())
}

#[tokio::test]
async fn unsafe_methods_are_skipped_unless_enabled_and_the_body_limit_holds() -> anyhow::Result<()>
{
    let s = stack().await?;
    let shadow = EchoUpstream::start().await?;
    let host = format!("127.0.0.1:{}", shadow.addr.port());
    s.apply(&format!(
        "{}---\n{}---\n{}",
        mirror_policy(
            "safe-default",
            &format!("match: {{path: {{prefix: /safe}}}}\nmirrors: [{{target: {{host: \"{host}\"}}}}]")
        ),
        mirror_policy(
            "post-listed",
            &format!(
                "match: {{path: {{prefix: /body}}}}\nmirrors: [{{target: {{host: \"{host}\"}}}}]\nmethods: [POST]\nmaxBodyBytes: 1000"
            )
        ),
        mirror_policy(
            "any-method",
            &format!("match: {{path: {{prefix: /any}}}}\nmirrors: [{{target: {{host: \"{host}\"}}}}]\nallowUnsafeMethods: true")
        ),
    ));
    s.wait_for_copies("/safe/warmup", |p| count_prefix(&shadow, p) > 0)
        .await?;
    let c = s.envoy.client();
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.timeout(Duration::from_secs(10)).send().await?;
        anyhow::Ok(r.status().as_u16())
    };

    // Default: POST/PUT/DELETE are not mirrored; GET, HEAD, OPTIONS are.
    for (m, path) in [
        ("POST", "/safe/post"),
        ("PUT", "/safe/put"),
        ("DELETE", "/safe/delete"),
    ] {
        let method = reqwest::Method::from_bytes(m.as_bytes())?;
        assert_eq!(
            send(c.request(method, s.envoy.url(path)).body("x")).await?,
            200
        );
    }
    for (m, path) in [
        ("GET", "/safe/get"),
        ("HEAD", "/safe/head"),
        ("OPTIONS", "/safe/options"),
    ] {
        let method = reqwest::Method::from_bytes(m.as_bytes())?;
        assert_eq!(send(c.request(method, s.envoy.url(path))).await?, 200);
    }
    // Listed / enabled unsafe methods are mirrored.
    assert_eq!(
        send(c.post(s.envoy.url("/body/at-limit")).body(vec![b'a'; 1000])).await?,
        200
    );
    assert_eq!(send(c.delete(s.envoy.url("/any/delete"))).await?, 200);
    // One byte over the limit (declared length, and chunked without a length): not
    // mirrored; the primary still gets the whole body.
    assert_eq!(
        send(
            c.post(s.envoy.url("/body/over-limit"))
                .body(vec![b'b'; 1001])
        )
        .await?,
        200
    );
    assert_eq!(
        chunked_post(&s.envoy, "/body/chunked-over", &[700, 700]).await?,
        200
    );
    assert_eq!(
        chunked_post(&s.envoy, "/body/chunked-ok", &[400, 600]).await?,
        200
    );

    for path in [
        "/safe/get",
        "/safe/head",
        "/safe/options",
        "/body/at-limit",
        "/any/delete",
        "/body/chunked-ok",
    ] {
        wait_until(Duration::from_secs(5), &format!("copy of {path}"), || {
            let c = shadow.last_with_path(path);
            async move { c }
        })
        .await?;
    }
    let at_limit = shadow.last_with_path("/body/at-limit").unwrap();
    assert_eq!(at_limit.body.len(), 1000);
    assert_eq!(
        shadow
            .last_with_path("/body/chunked-ok")
            .unwrap()
            .body
            .len(),
        1000
    );
    assert_eq!(
        shadow.last_with_path("/any/delete").unwrap().method,
        "DELETE"
    );
    // Give stray copies time to arrive before asserting absence.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in [
        "/safe/post",
        "/safe/put",
        "/safe/delete",
        "/body/over-limit",
        "/body/chunked-over",
    ] {
        assert!(
            shadow.last_with_path(path).is_none(),
            "{path} must not be mirrored"
        );
    }
    assert_eq!(
        s.primary
            .last_with_path("/body/over-limit")
            .unwrap()
            .body
            .len(),
        1001
    );
    assert_eq!(
        s.primary
            .last_with_path("/body/chunked-over")
            .unwrap()
            .body
            .len(),
        1400
    );
    assert_eq!(s.mirror_stat("skipped_method", "safe-default").await?, 3);
    assert_eq!(
        s.mirror_stat("skipped_body_too_large", "post-listed")
            .await?,
        2
    );
    Ok(())
}

/// POSTs a chunked body (no content-length) over a raw connection; returns the status.
async fn chunked_post(envoy: &Envoy, path: &str, chunks: &[usize]) -> anyhow::Result<u16> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", envoy.listen_port)).await?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        envoy.listen_port
    )
    .into_bytes();
    for n in chunks {
        req.extend(format!("{n:x}\r\n").as_bytes());
        req.extend(std::iter::repeat_n(b'c', *n));
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    conn.write_all(&req).await?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut resp)).await??;
    let line = String::from_utf8_lossy(&resp);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad response: {line:.200}"))?;
    Ok(status)
}

/// A listener that accepts connections and never answers; stops when dropped.
struct BlackHole {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                held.push(sock);
            }
        });
        Ok(Self { port, task })
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn percentile(mut lat: Vec<Duration>, p: f64) -> Duration {
    lat.sort();
    lat[((lat.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test]
async fn dead_black_holed_or_slow_targets_never_hurt_the_primary() -> anyhow::Result<()> {
    let s = stack().await?;
    let slow = EchoUpstream::start().await?;
    let hole = BlackHole::start().await?;
    let down_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let n = 200;
    let run = |tag: &'static str| {
        let base = s.envoy.url(&format!("/lat/{tag}"));
        fire(&s.envoy, n, 4, move |c, i| c.get(format!("{base}/{i}")))
    };

    // Baseline in the same run, without a mirror policy.
    let baseline = run("base").await;
    assert!(baseline.iter().all(|(st, _)| *st == 200));

    s.apply(&mirror_policy(
        "bad-targets",
        &format!(
            r#"mirrors:
- target: {{host: "127.0.0.1:{down_port}"}}
- target: {{host: "127.0.0.1:{}"}}
- target: {{host: "127.0.0.1:{}"}}
addHeaders: {{x-echo-delay-ms: "2000"}}
timeout: 1s"#,
            hole.port,
            slow.addr.port()
        ),
    ));
    s.wait_for_copies("/lat/warmup", |p| count_prefix(&slow, p) > 0)
        .await?;
    let mirrored = run("mirror").await;
    let failed = mirrored.iter().filter(|(st, _)| *st != 200).count();
    assert_eq!(failed, 0, "{failed} of {n} primary requests failed");
    assert!(count_prefix(&slow, "/lat/mirror/") > 0, "copies were sent");

    let lat = |r: &[(u16, Duration)]| r.iter().map(|(_, d)| *d).collect::<Vec<_>>();
    let (b50, m50) = (
        percentile(lat(&baseline), 0.5),
        percentile(lat(&mirrored), 0.5),
    );
    let (b99, m99) = (
        percentile(lat(&baseline), 0.99),
        percentile(lat(&mirrored), 0.99),
    );
    eprintln!("primary latency p50 {b50:?} -> {m50:?}, p99 {b99:?} -> {m99:?}");
    // A primary waiting on any copy would take >= 1 s (timeout) or 2 s (slow target).
    let worst = lat(&mirrored).into_iter().max().unwrap();
    assert!(
        worst < Duration::from_millis(900),
        "slowest primary took {worst:?}"
    );
    assert!(
        m50 <= b50 * 3 + Duration::from_millis(20),
        "p50 {b50:?} -> {m50:?}"
    );

    // Each failed copy is counted as an error, not hidden.
    let errors = wait_until(Duration::from_secs(10), "mirror errors counted", || {
        let f = s.mirror_stat("errors", "bad-targets");
        async move { f.await.ok().filter(|e| *e >= n as i64) }
    })
    .await?;
    assert!(errors >= n as i64, "{errors}");
    Ok(())
}

#[tokio::test]
async fn diff_mode_counts_matches_and_mismatches() -> anyhow::Result<()> {
    let s = stack().await?;
    let candidate = EchoUpstream::start().await?;
    let target = format!(
        "mirrors: [{{target: {{host: \"127.0.0.1:{}\"}}}}]",
        candidate.addr.port()
    );
    // The echo body lists the request headers, which legitimately differ on copies.
    s.apply(&format!(
        "{}---\n{}---\n{}",
        mirror_policy(
            "diff-same",
            &format!("match: {{path: {{prefix: /same}}}}\n{target}\ndiff: {{headers: [content-type], body: json, ignoreJsonFields: [\"$.headers\"]}}")
        ),
        mirror_policy(
            "diff-status",
            &format!("match: {{path: {{prefix: /status}}}}\n{target}\naddHeaders: {{x-echo-status: \"500\"}}\ndiff: {{body: json, ignoreJsonFields: [\"$.headers\"]}}")
        ),
        mirror_policy(
            "diff-body",
            &format!("match: {{path: {{prefix: /body}}}}\n{target}\ndiff: {{body: json}}")
        ),
    ));
    s.wait_for_copies("/same/warmup", |p| count_prefix(&candidate, p) > 0)
        .await?;
    let same0 = s.mirror_stat("diff_match", "diff-same").await?;
    // A mismatch log line carries the request's trace id (joins the application's logs).
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    s.envoy
        .get("/status/traced", &[("traceparent", &tp)])
        .await?;
    wait_until(
        Duration::from_secs(10),
        "a mismatch line with the trace id",
        || {
            let found =
                s.envoy.log().lines().any(|l| {
                    l.contains("policy=diff-status") && l.contains(&format!("trace={trace}"))
                });
            async move { found.then_some(()) }
        },
    )
    .await?;
    let n = 20;
    for prefix in ["/same", "/status", "/body"] {
        for i in 0..n {
            let r = s.envoy.get(&format!("{prefix}/{i}"), &[]).await?;
            assert_eq!(
                r.status().as_u16(),
                200,
                "the client always gets the primary's status"
            );
        }
    }
    let want = [
        ("diff_match", "diff-same", same0 + n),
        ("diff_mismatch", "diff-status", n + 1),
        ("diff_mismatch", "diff-body", n),
    ];
    for (metric, policy, expected) in want {
        wait_until(
            Duration::from_secs(10),
            &format!("{metric} of {policy} = {expected}"),
            || {
                let f = s.mirror_stat(metric, policy);
                async move { f.await.ok().filter(|v| *v == expected) }
            },
        )
        .await?;
    }
    assert_eq!(s.mirror_stat("diff_mismatch", "diff-same").await?, 0);
    assert_eq!(s.mirror_stat("diff_match", "diff-status").await?, 0);
    assert_eq!(s.mirror_stat("diff_match", "diff-body").await?, 0);
    // A bounded sample of mismatches is logged with path, statuses and first difference.
    let log = s.envoy.log();
    assert!(
        log.lines().any(|l| l.contains("policy=diff-status")
            && l.contains("primary_status=200 mirror_status=500")
            && l.contains("status differs")),
        "no status mismatch line in envoy log"
    );
    assert!(
        log.lines().any(|l| l.contains("policy=diff-body")
            && l.contains("path=/body/")
            && l.contains("$.headers")),
        "no body mismatch line naming $.headers"
    );
    let logged = log
        .lines()
        .filter(|l| l.contains("mirror diff: policy=diff-body"))
        .count();
    assert!(
        logged <= 10 * 2,
        "mismatch logging is rate limited per worker ({logged} lines)"
    );
    Ok(())
}

#[tokio::test]
async fn max_per_second_caps_copies_across_workers() -> anyhow::Result<()> {
    let s = stack().await?;
    let shadow = EchoUpstream::start().await?;
    s.apply(&mirror_policy(
        "capped",
        &format!(
            "mirrors: [{{target: {{host: \"127.0.0.1:{}\"}}}}]\nmaxPerSecond: 10",
            shadow.addr.port()
        ),
    ));
    s.wait_for_copies("/warmup", |p| count_prefix(&shadow, p) > 0)
        .await?;
    let t0 = Instant::now();
    let base = s.envoy.url("/capped");
    let results = fire(&s.envoy, 300, 8, move |c, i| c.get(format!("{base}/{i}"))).await;
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(results.iter().all(|(st, _)| *st == 200));
    let copies = settle(Duration::from_secs(5), Duration::from_millis(300), || {
        count_prefix(&shadow, "/capped/")
    })
    .await;
    // A full bucket (10) plus 10 per second, whichever worker takes the tokens.
    let bound = 10.0 + 10.0 * elapsed + 1.0;
    assert!(
        (copies as f64) <= bound,
        "{copies} copies in {elapsed:.2} s (bound {bound:.1})"
    );
    assert!(copies >= 1);
    let capped = s.mirror_stat("skipped_rate_capped", "capped").await?;
    assert!(capped as usize >= 300 - copies, "rate_capped {capped}");
    Ok(())
}

/// Whether Envoy currently has a cluster named `name` (admin `/clusters`).
async fn has_cluster(envoy: &Envoy, name: &str) -> anyhow::Result<bool> {
    let text = envoy
        .client()
        .get(envoy.admin_url("/clusters"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text.lines().any(|l| l.starts_with(&format!("{name}::"))))
}

#[tokio::test]
async fn delta_ads_delivers_and_removes_the_cluster_of_a_host_target() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let primary = EchoUpstream::start().await?;
    let shadow = EchoUpstream::start().await?;
    let opts = EnvoyOptions {
        node_id: "delta-proxy".into(),
        delta: true,
        ..Default::default()
    };
    let s = Stack {
        envoy: Envoy::start(&cp, primary.addr.port(), opts).await?,
        primary,
        cp,
    };
    let cluster = format!("meshwarden_mirror_127.0.0.1_{}", shadow.addr.port());
    assert!(!has_cluster(&s.envoy, &cluster).await?);
    s.apply(&mirror_policy(
        "shadow-all",
        &format!("mirror: {{host: \"127.0.0.1:{}\"}}", shadow.addr.port()),
    ));
    s.wait_for_copies("/delta", |p| count_prefix(&shadow, p) > 0)
        .await?;
    assert!(has_cluster(&s.envoy, &cluster).await?);
    delete_and_wait_for_cluster_removal(&s, "shadow-all", &cluster).await
}

/// Deletes a policy and waits until its target's cluster is gone; the proxy keeps serving.
async fn delete_and_wait_for_cluster_removal(
    s: &Stack,
    policy: &str,
    cluster: &str,
) -> anyhow::Result<()> {
    let out = s.cp.cli().run(&["delete", "mirror", policy]);
    assert!(out.success, "{}", out.stderr);
    wait_until(Duration::from_secs(10), "cluster removed", || async {
        (!has_cluster(&s.envoy, cluster).await.unwrap_or(true)).then_some(())
    })
    .await?;
    assert_eq!(
        s.envoy.get("/after-delete", &[]).await?.status().as_u16(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn metadata_link_local_and_own_targets_are_refused_at_apply() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    for (target, why) in [
        ("169.254.169.254:80", "link-local or cloud-metadata"),
        ("metadata.google.internal:80", "cloud-metadata"),
        (
            &*format!("127.0.0.1:{}", cp.grpc_port),
            "own listen address",
        ),
    ] {
        let out = cp.cli().apply_yaml(&mirror_policy(
            "exfil",
            &format!("mirrors:\n- target: {{host: \"{target}\"}}\nallowUnsafeMethods: true"),
        ));
        assert!(!out.success, "{target} accepted");
        assert!(
            out.stderr.contains("spec.mirrors[0].target.host") && out.stderr.contains(why),
            "{target}: {}",
            out.stderr
        );
    }
    let list = cp.cli().run(&["get", "-o", "json"]);
    assert!(!list.stdout.contains("exfil"), "nothing was stored");
    Ok(())
}
