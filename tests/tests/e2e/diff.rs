//! `apply --dry-run` and `diff -f` against a control plane with a connected Envoy: server-side
//! validation with nothing stored, per-policy outcomes with a readable diff, and exactly the
//! connected proxies whose configuration would change.

use crate::support::{accepted_version, policy, wait_accepted_change, yaml_file};
use meshwarden_e2e::{ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::Value;

fn sampling(rate: u32) -> String {
    policy(
        "TracePolicy",
        "tracing",
        &format!("samplingPercentage: {rate}"),
    )
}

fn zone_fault(zone: &str) -> String {
    policy(
        "FaultPolicy",
        &format!("chaos-{zone}"),
        &format!(
            "selector: {{labels: {{zone: {zone}}}}}\nabort: {{httpStatus: 503, percentage: {{value: 5}}}}"
        ),
    )
}

#[tokio::test]
async fn dry_run_stores_nothing_and_diff_names_changes_and_affected_proxies() -> anyhow::Result<()>
{
    let cp = ControlPlane::start().await?;
    let up = EchoUpstream::start().await?;
    let opts = EnvoyOptions {
        node_id: "diff-eu".into(),
        labels: [("zone".to_string(), "eu".to_string())].into(),
        ..Default::default()
    };
    let _envoy = Envoy::start(&cp, up.addr.port(), opts).await?;
    let cli = cp.cli();
    let before = accepted_version(&cli, "diff-eu", crate::support::FILTER);
    let out = cli.apply_yaml(&sampling(10));
    anyhow::ensure!(out.success, "apply failed: {}", out.stderr);
    wait_accepted_change(&cli, "diff-eu", crate::support::FILTER, &before).await?;

    // Dry run: validated by the server (mirror target rules included), reported, not stored.
    let change = yaml_file(&format!(
        "{}---\n{}---\n{}",
        sampling(20),
        zone_fault("eu"),
        zone_fault("us")
    ))?;
    let path = change.path().display().to_string();
    let out = cli.run(&["apply", "--dry-run", "-f", &path]);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "tracepolicy/tracing configured (dry run)\nfaultpolicy/chaos-eu created (dry run)\nfaultpolicy/chaos-us created (dry run)\n"
    );
    let metadata_target = yaml_file(&policy(
        "MirrorPolicy",
        "steal",
        "mirror: {host: \"169.254.169.254:80\"}",
    ))?;
    let out = cli.run(&[
        "apply",
        "--dry-run",
        "-f",
        &metadata_target.path().display().to_string(),
    ]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("(MirrorPolicy \"steal\"): spec.mirror.host")
            || out.stderr.contains("spec.mirrors[0].target.host"),
        "the server's target check names the field: {}",
        out.stderr
    );
    let listed = cli.run(&["get", "-o", "json"]);
    let docs: Value = serde_json::from_str(&listed.stdout)?;
    assert_eq!(
        docs.as_array().map(Vec::len),
        Some(1),
        "nothing stored: {docs}"
    );

    // Diff: outcomes, the changed lines, and only the eu proxy would get a new version.
    let out = cli.run(&["diff", "-f", &path]);
    assert!(out.success, "{}", out.stderr);
    let text = &out.stdout;
    assert!(text.starts_with("tracepolicy/tracing changed\n"), "{text}");
    assert!(
        text.contains("\n-  samplingPercentage: 10")
            && text.contains("\n+  samplingPercentage: 20"),
        "{text}"
    );
    assert!(text.contains("faultpolicy/chaos-eu created\n"), "{text}");
    assert!(text.contains("+    httpStatus: 503"), "{text}");
    assert!(
        text.contains("Connected proxies that would get a new version (1):\n"),
        "{text}"
    );
    assert!(
        text.contains("  diff-eu (test) meshwarden.all: tracing -> tracing,chaos-eu\n"),
        "{text}"
    );
    assert!(
        !text.contains("meshwarden.trace") && !text.contains("meshwarden.fault"),
        "only the filter the proxy runs is listed: {text}"
    );
    let json = cli.run(&["diff", "-f", &path, "-o", "json"]);
    let v: Value = serde_json::from_str(&json.stdout)?;
    let outcomes: Vec<&str> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["changed", "created", "created"]);
    assert_eq!(v["proxies"][0]["nodeId"], "diff-eu");
    let resources: Vec<&str> = v["proxies"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        [crate::support::FILTER],
        "the filter the proxy runs"
    );

    // After the apply the same file changes nothing.
    let fault_before = accepted_version(&cli, "diff-eu", crate::support::FILTER);
    let out = cli.run(&["apply", "-f", &path]);
    assert!(out.success, "{}", out.stderr);
    wait_accepted_change(&cli, "diff-eu", crate::support::FILTER, &fault_before).await?;
    let out = cli.run(&["diff", "-f", &path]);
    assert_eq!(
        out.stdout,
        "tracepolicy/tracing unchanged\nfaultpolicy/chaos-eu unchanged\nfaultpolicy/chaos-us unchanged\n\nNo connected proxy would get a new version.\n"
    );
    // An invalid document is refused by diff as by apply, naming file, document and field.
    let bad = yaml_file(&sampling(150))?;
    let out = cli.run(&["diff", "-f", &bad.path().display().to_string()]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("document 1 (TracePolicy \"tracing\"): spec.samplingPercentage"),
        "{}",
        out.stderr
    );
    Ok(())
}
