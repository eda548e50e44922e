//! `meshwarden explain` against the real outcome in Envoy: a rate limit, a sticky 50 % abort
//! and a mirror on the same path. For a user explain says is aborted, Envoy answers 503 and
//! sends no copy; for one it says is not, Envoy forwards and mirrors the first request and
//! rate limits the second, as explained.

use crate::support::{accepted_version, policy, wait_accepted_change};
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::Value;
use std::time::Duration;

const NODE: &str = "explain-proxy";
const MARKER: &str = "x-meshwarden-mirror";

/// `explain -o json` for a GET of `path` by `user` on the proxy.
fn explain(cli: &meshwarden_e2e::Cli, path: &str, user: &str) -> anyhow::Result<Value> {
    let out = cli.run(&[
        "explain",
        "--node-id",
        NODE,
        "--path",
        path,
        "-H",
        &format!("x-user:{user}"),
        "-o",
        "json",
    ]);
    anyhow::ensure!(out.success, "explain failed: {}", out.stderr);
    Ok(serde_json::from_str(&out.stdout)?)
}

/// The explanation of `policy` in the filter of `kind`.
fn policy_of<'a>(e: &'a Value, kind: &str, policy: &str) -> &'a Value {
    let filter = e["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == kind)
        .unwrap();
    filter["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == policy)
        .unwrap()
}

fn reached(e: &Value, kind: &str) -> String {
    e["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == kind)
        .map(|f| f["reached"].as_str().unwrap().to_string())
        .unwrap()
}

#[tokio::test]
async fn explain_predicts_the_abort_the_rate_limit_and_the_mirror_envoy_applies(
) -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let up = EchoUpstream::start().await?;
    let shadow = EchoUpstream::start().await?;
    let opts = EnvoyOptions {
        node_id: NODE.into(),
        ..Default::default()
    };
    let envoy = Envoy::start(&cp, up.addr.port(), opts).await?;
    let cli = cp.cli();
    let before = accepted_version(&cli, NODE, crate::support::FILTER);
    let docs = [
        policy(
            "RateLimitPolicy",
            "per-user",
            "match: {path: {prefix: /explain}}\nrate: {requests: 1, unit: minute}\ndescriptors: [{header: x-user}]",
        ),
        policy(
            "FaultPolicy",
            "chaos",
            "match: {path: {prefix: /explain}}\nabort: {httpStatus: 503, percentage: {value: 50}}\nsticky: {header: x-user, seed: 7}",
        ),
        policy(
            "MirrorPolicy",
            "shadow",
            &format!(
                "match: {{path: {{prefix: /explain}}}}\nmirror: {{host: \"127.0.0.1:{}\"}}",
                shadow.addr.port()
            ),
        ),
    ];
    let out = cli.apply_yaml(&docs.join("---\n"));
    anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
    wait_accepted_change(&cli, NODE, crate::support::FILTER, &before).await?;

    // Explain sorts users into aborted and not (a sticky key decides).
    let (mut aborted, mut spared) = (None, None);
    for i in 0..40 {
        let user = format!("user-{i}");
        let e = explain(&cli, &format!("/explain/{user}"), &user)?;
        let abort = &policy_of(&e, "FaultPolicy", "chaos")["effect"]["abort"];
        assert_eq!(abort["what"], "abort 503");
        match abort["selected"].as_bool() {
            Some(true) if aborted.is_none() => aborted = Some((user, e)),
            Some(false) if spared.is_none() => spared = Some((user, e)),
            Some(_) => {}
            None => anyhow::bail!("a sticky abort is decided per user: {abort}"),
        }
    }
    let (aborted, a_explained) = aborted.expect("some user is aborted at 50 %");
    let (spared, s_explained) = spared.expect("some user is spared at 50 %");

    // What explain says about the spared user: limited by its own bucket, not aborted,
    // mirrored unless the rate limit answers first.
    let rl = &policy_of(&s_explained, "RateLimitPolicy", "per-user");
    assert_eq!(rl["applies"], true);
    assert_eq!(rl["effect"]["limit"], "1 request per minute (burst 1)");
    assert_eq!(
        rl["effect"]["bucket"][0],
        serde_json::json!(["x-user", spared])
    );
    assert!(rl["effect"]["remainingTokens"]
        .as_str()
        .unwrap()
        .starts_with("unknown"));
    assert_eq!(reached(&s_explained, "FaultPolicy"), "maybe");
    assert_eq!(reached(&s_explained, "MirrorPolicy"), "maybe");
    let target = &policy_of(&s_explained, "MirrorPolicy", "shadow")["effect"]["targets"][0];
    assert_eq!(target["selected"], true);
    assert_eq!(
        target["target"],
        format!("host 127.0.0.1:{}", shadow.addr.port())
    );
    // ...and about the aborted one: the mirror is never reached.
    assert_eq!(reached(&a_explained, "MirrorPolicy"), "no");

    // Envoy agrees. The spared user's first request is forwarded and copied.
    let path = format!("/explain/{spared}");
    let r = envoy.get(&path, &[("x-user", &spared)]).await?;
    assert_eq!(r.status().as_u16(), 200);
    let copy = wait_until(Duration::from_secs(10), "the mirror copy", || {
        let c = shadow.last_with_path(&path);
        async move { c }
    })
    .await?;
    assert_eq!(copy.header(MARKER).as_deref(), Some("shadow"));
    // Its second request finds its bucket empty: 429, as explained.
    let r = envoy.get(&path, &[("x-user", &spared)]).await?;
    assert_eq!(r.status().as_u16(), 429);
    // The aborted user's request is answered 503 by the fault filter and never copied.
    let path = format!("/explain/{aborted}");
    let r = envoy.get(&path, &[("x-user", &aborted)]).await?;
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.text().await?, "fault filter abort");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        shadow.last_with_path(&path).is_none(),
        "an aborted request is not mirrored"
    );
    assert!(up.last_with_path(&path).is_none());

    // The table says the same in words.
    let out = cli.run(&[
        "explain",
        "--node-id",
        NODE,
        "--path",
        &path,
        "-H",
        &format!("x-user:{aborted}"),
    ]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("chaos                    APPLIES: abort 503 at 50% -> this request: yes"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("meshwarden.mirror (MirrorPolicy: first matching policy applies; NOT REACHED: an earlier filter answers)"), "{}", out.stdout);
    // A proxy described by its identity instead of its node id gets the same policies.
    let out = cli.run(&[
        "explain",
        "--cluster",
        "test",
        "--path",
        "/explain/x",
        "-o",
        "json",
    ]);
    let e: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(policy_of(&e, "FaultPolicy", "chaos")["onProxy"], true);
    let out = cli.run(&["explain", "--node-id", "nobody"]);
    assert!(!out.success && out.stderr.contains("no proxy \"nobody\" is known"));
    Ok(())
}
