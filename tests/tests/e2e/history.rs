//! Policy history and rollback, and optimistic concurrency, through the CLI: a rollback
//! (also of a deleted policy) is enforced by a real Envoy again, and applies racing from
//! the same revision never lose an update.

use crate::support::{policy, trace_policy, yaml_file};
use meshwarden_e2e::{wait_until, Cli, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::Value;
use std::time::Duration;

/// A FaultPolicy aborting every request under `/gate` with `status`.
pub(crate) fn gate(status: u16) -> String {
    policy(
        "FaultPolicy",
        "gate",
        &format!("match: {{path: {{prefix: /gate}}}}\nabort: {{httpStatus: {status}, percentage: {{value: 100}}}}"),
    )
}

/// Waits until requests under `/gate` through `envoy` get `status`.
pub(crate) async fn wait_status(envoy: &Envoy, status: u16, what: &str) -> anyhow::Result<()> {
    let n = std::sync::atomic::AtomicUsize::new(0);
    wait_until(Duration::from_secs(20), what, || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let resp = envoy.get(&format!("/gate/{i}"), &[]).await.ok()?;
            (resp.status().as_u16() == status).then_some(())
        }
    })
    .await
}

/// Runs `args` and returns stdout, failing with stderr if the command failed.
pub(crate) fn ok(cli: &Cli, args: &[&str]) -> anyhow::Result<String> {
    let out = cli.run(args);
    anyhow::ensure!(out.success, "meshwarden {args:?} failed: {}", out.stderr);
    Ok(out.stdout)
}

#[tokio::test]
async fn rollback_and_rollback_of_a_deleted_policy_are_enforced_by_envoy() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let upstream = EchoUpstream::start().await?;
    let envoy = Envoy::start(&cp, upstream.addr.port(), EnvoyOptions::default()).await?;
    let cli = cp.cli();
    rollback_round_trip(&cli, &envoy).await?;
    // A rollback is audited like an apply.
    let audit = ok(&cli, &["audit", "-o", "json"])?;
    assert!(audit.contains("\"action\": \"rollback\""), "{audit}");
    Ok(())
}

/// Applies, rolls back, deletes and rolls back to life the FaultPolicy `gate` through
/// `cli`, checking that `envoy` enforces each step and that the history lists them all.
pub(crate) async fn rollback_round_trip(cli: &Cli, envoy: &Envoy) -> anyhow::Result<()> {
    let out = cli.apply_yaml(&gate(503));
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "faultpolicy/gate created (revision 1)\n");
    wait_status(envoy, 503, "v1 (503) enforced").await?;
    let out = cli.apply_yaml(&gate(418));
    assert_eq!(out.stdout, "faultpolicy/gate configured (revision 2)\n");
    wait_status(envoy, 418, "v2 (418) enforced").await?;

    // Back to v1: a new revision, enforced again.
    let out = ok(cli, &["rollback", "fault", "gate"])?;
    assert_eq!(out, "faultpolicy/gate configured (revision 3)\n");
    wait_status(envoy, 503, "v1 enforced again after the rollback").await?;

    // `get --revision` shows an old revision; the history lists every change.
    let v2: Value = serde_json::from_str(&ok(
        cli,
        &["get", "fault", "gate", "--revision", "2", "-o", "json"],
    )?)?;
    assert_eq!(
        v2["spec"]["abort"]["httpStatus"].as_f64(),
        Some(418.0),
        "{v2}"
    );
    assert_eq!(v2["metadata"]["revision"], 2);

    // Deleted, then rolled back to life (to v2 by number).
    ok(cli, &["delete", "fault", "gate"])?;
    wait_status(envoy, 200, "no fault once deleted").await?;
    let out = ok(cli, &["rollback", "fault", "gate", "--to", "2"])?;
    assert_eq!(out, "faultpolicy/gate created (revision 5)\n");
    wait_status(envoy, 418, "v2 enforced after restoring the deleted policy").await?;

    let history: Value =
        serde_json::from_str(&ok(cli, &["history", "fault", "gate", "-o", "json"])?)?;
    let changes: Vec<(u64, &str, Option<u64>)> = history
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["revision"].as_u64().unwrap_or_default(),
                r["change"].as_str().unwrap_or_default(),
                r["rollbackOf"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (1, "created", None),
            (2, "updated", None),
            (3, "rolled-back", Some(1)),
            (4, "deleted", None),
            (5, "rolled-back", Some(2)),
        ]
    );
    assert!(history[3]["document"].is_null());
    let table = ok(cli, &["history", "fault", "gate"])?;
    assert!(table.starts_with("REVISION   CHANGE"), "{table}");
    assert!(table.contains("rolled-back (to 2)   anonymous"), "{table}");

    Ok(())
}

#[tokio::test]
async fn applies_based_on_a_stale_revision_conflict_and_racing_ones_never_lose_an_update(
) -> anyhow::Result<()> {
    let mut cp = ControlPlane::start().await?;
    let cli = cp.cli();
    assert!(
        cli.apply_yaml(&trace_policy("race", "samplingPercentage: 0"))
            .success
    );

    // A copy from `get -o yaml` carries its revision; applied unchanged it is unchanged.
    let copy = ok(&cli, &["get", "trace", "race", "-o", "yaml"])?;
    assert!(copy.contains("revision: 1"), "{copy}");
    let out = cli.apply_yaml(&copy);
    assert_eq!(
        out.stdout, "tracepolicy/race unchanged (revision 1)\n",
        "{}",
        out.stderr
    );
    // Someone else changes it; the edited stale copy is refused, naming the policy.
    assert!(
        cli.apply_yaml(&trace_policy("race", "samplingPercentage: 5"))
            .success
    );
    let edited = copy.replace("samplingPercentage: 0", "samplingPercentage: 9");
    let out = cli.apply_yaml(&edited);
    assert!(!out.success, "{out:?}");
    assert!(
        out.stderr
            .contains("conflict: TracePolicy \"race\" is at revision 2, not revision 1"),
        "{}",
        out.stderr
    );
    let file = yaml_file(&edited)?;
    let path = file.path().display().to_string();
    let out = ok(&cli, &["apply", "--force", "-f", &path])?;
    assert_eq!(out, "tracepolicy/race configured (revision 3)\n");

    // 100 rounds of two concurrent applies based on the same revision.
    let revision = race(&cli, &cli, 3, 100)?;

    // kill -9: every acknowledged apply and its revision are still there.
    cp.kill9();
    cp.restart().await?;
    let cli = cp.cli();
    let history: Value =
        serde_json::from_str(&ok(&cli, &["history", "trace", "race", "-o", "json"])?)?;
    let revisions: Vec<u64> = history
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|r| r["revision"].as_u64())
        .collect();
    assert_eq!(revisions.len(), 50, "the last 50 are kept");
    assert_eq!(revisions.last(), Some(&revision));
    let stored: Value = serde_json::from_str(&ok(&cli, &["get", "trace", "race", "-o", "json"])?)?;
    assert_eq!(stored["metadata"]["revision"], revision);
    Ok(())
}

#[tokio::test]
async fn history_names_the_caller_and_rollback_needs_editor_rights_for_the_policy(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = crate::security::token_file(dir.path())?;
    let args = vec!["--token-file".into(), tokens.display().to_string()];
    let cp = ControlPlane::start_with_args(args, None, Vec::new()).await?;
    let as_user = |token: &str| cp.cli().with_args(&["--token".into(), token.into()]);
    let (viewer, team_a, admin) = (
        as_user("viewer-token"),
        as_user("team-a-token"),
        as_user("admin-token"),
    );
    let fault = |name: &str, pct: u32| {
        policy(
            "FaultPolicy",
            name,
            &format!("abort: {{httpStatus: 503, percentage: {{value: {pct}}}}}"),
        )
    };
    assert!(admin.apply_yaml(&fault("team-a-x", 1)).success);
    assert!(team_a.apply_yaml(&fault("team-a-x", 2)).success);
    assert!(admin.apply_yaml(&fault("team-b-x", 1)).success);
    assert!(admin.apply_yaml(&fault("team-b-x", 2)).success);

    // Viewers read the history; it names who made each change.
    let history: Value = serde_json::from_str(&ok(
        &viewer,
        &["history", "fault", "team-a-x", "-o", "json"],
    )?)?;
    let actors: Vec<&str> = history
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|r| r["actor"].as_str())
        .collect();
    assert_eq!(actors, ["admin", "team-a"]);
    assert!(
        viewer
            .run(&["get", "fault", "team-a-x", "--revision", "1"])
            .success
    );

    // Rolling back is writing: not for viewers, nor for editors outside their scope.
    let out = viewer.run(&["rollback", "fault", "team-a-x"]);
    assert!(
        !out.success && out.stderr.contains("needs editor"),
        "{}",
        out.stderr
    );
    let out = team_a.run(&["rollback", "fault", "team-b-x"]);
    assert!(
        !out.success
            && out
                .stderr
                .contains(r#"rollback of FaultPolicy "team-b-x" refused"#)
            && out.stderr.contains("team-a-*"),
        "{}",
        out.stderr
    );
    let out = ok(&team_a, &["rollback", "fault", "team-a-x"])?;
    assert_eq!(out, "faultpolicy/team-a-x configured (revision 3)\n");
    let history: Value = serde_json::from_str(&ok(
        &viewer,
        &["history", "fault", "team-a-x", "-o", "json"],
    )?)?;
    assert_eq!(history[2]["actor"], "team-a");
    assert_eq!(history[2]["change"], "rolled-back");

    // Every rollback attempt is in the audit trail.
    let trail: Value = serde_json::from_str(&ok(&admin, &["audit", "-o", "json"])?)?;
    let rollbacks: Vec<(&str, &str)> = trail
        .as_array()
        .expect("an array")
        .iter()
        .filter(|e| e["action"] == "rollback")
        .map(|e| {
            (
                e["identity"].as_str().unwrap_or(""),
                e["result"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        rollbacks,
        [
            ("viewer", "refused"),
            ("team-a", "refused"),
            ("team-a", "configured")
        ]
    );
    Ok(())
}

/// `rounds` rounds of two applies of the TracePolicy `race`, both based on its current
/// revision (`start` at first), sent at once through `first` and `second` (the same control
/// plane, or two replicas): exactly one wins each round, the other gets a conflict naming
/// the revisions, and the winner's content is what is stored. Returns the last revision.
pub(crate) fn race(first: &Cli, second: &Cli, start: u64, rounds: u64) -> anyhow::Result<u64> {
    let mut revision = start;
    for round in 0..rounds {
        let mut files = Vec::new();
        for n in [1, 2] {
            let spec = format!("samplingPercentage: {}", n * 10 + round % 10);
            let based = format!("  name: race\n  revision: {revision}");
            files.push(yaml_file(
                &trace_policy("race", &spec).replace("  name: race", &based),
            )?);
        }
        let paths: Vec<String> = files
            .iter()
            .map(|f| f.path().display().to_string())
            .collect();
        let outs: Vec<_> = std::thread::scope(|s| {
            let runs: Vec<_> = paths
                .iter()
                .zip([first, second])
                .map(|(p, cli)| s.spawn(move || cli.run(&["apply", "-f", p])))
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("CLI thread"))
                .collect()
        });
        let winners: Vec<_> = outs.iter().filter(|o| o.success).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one wins: {outs:?}"
        );
        let loser = outs.iter().find(|o| !o.success).expect("one loses");
        assert!(
            loser.stderr.contains(&format!(
                "is at revision {}, not revision {revision}",
                revision + 1
            )),
            "round {round}: {}",
            loser.stderr
        );
        revision += 1;
        assert!(
            winners[0]
                .stdout
                .ends_with(&format!("(revision {revision})\n")),
            "round {round}: {}",
            winners[0].stdout
        );
        // Read back where it was written (another replica may be a moment behind).
        let (winner, winner_cli) = if outs[0].success {
            (1, first)
        } else {
            (2, second)
        };
        let stored: Value =
            serde_json::from_str(&ok(winner_cli, &["get", "trace", "race", "-o", "json"])?)?;
        assert_eq!(stored["metadata"]["revision"], revision, "round {round}");
        assert_eq!(
            stored["spec"]["samplingPercentage"].as_f64(),
            Some((winner * 10 + round % 10) as f64),
            "round {round}: the winner's content is stored"
        );
    }
    Ok(revision)
}
