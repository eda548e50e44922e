//! Secure by default (issue 12): TLS and mutual TLS on the control plane's ports with
//! certificates generated at test time, node ids bound to client certificates, and
//! certificates rotated on disk without dropping streams.

use crate::support::{policy, trace_policy, wait_traced, FILTER};
use meshwarden_cp::bootstrap::XdsTls;
use meshwarden_cp::test_pki::CertFiles;
use meshwarden_e2e::tls::{server_certificate, TestPki};
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use serde_json::Value;
use std::time::Duration;

/// A control plane requiring mutual TLS (plus `extra` flags), with a CLI presenting the
/// certificate `spiffe://test/ops/cli`.
async fn mtls_control_plane_with(pki: &TestPki, extra: &[String]) -> anyhow::Result<ControlPlane> {
    let cli_cert = pki.client("cli", &["spiffe://test/ops/cli"]);
    let mut args = pki.serve_args();
    args.extend_from_slice(extra);
    ControlPlane::start_with_args(
        args,
        Some(pki.connector(None, b"http/1.1")?),
        pki.cli_args(&cli_cert),
    )
    .await
}

async fn mtls_control_plane(pki: &TestPki) -> anyhow::Result<ControlPlane> {
    mtls_control_plane_with(pki, &[]).await
}

/// Envoy options connecting as `node_id` with the client certificate `cert`.
fn mtls_envoy(pki: &TestPki, node_id: &str, cert: &CertFiles, wait: bool) -> EnvoyOptions {
    EnvoyOptions {
        node_id: node_id.into(),
        wait_for_config: wait,
        xds_tls: Some(XdsTls {
            ca: pki.ca_file.clone(),
            client: Some((cert.cert.clone(), cert.key.clone())),
            server_name: Some("localhost".into()),
        }),
        ..Default::default()
    }
}

/// The status rows of the connected streams of `node`.
fn connected(cp: &ControlPlane, node: &str) -> Vec<Value> {
    let status = cp.cli().status_json();
    status["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["nodeId"] == node && p["connected"] == true)
        .cloned()
        .collect()
}

#[tokio::test]
async fn envoy_gets_its_config_over_mtls_and_a_proxy_with_another_identity_is_refused(
) -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let cp = mtls_control_plane(&pki).await?;
    let up = EchoUpstream::start().await?;

    let edge1 = pki.client("edge-1", &["edge-1"]);
    let envoy = Envoy::start(
        &cp,
        up.addr.port(),
        mtls_envoy(&pki, "edge-1", &edge1, true),
    )
    .await?;
    let applied = cp.cli().apply_yaml(&trace_policy("t", "formats: [w3c]"));
    assert!(applied.success, "{}", applied.stderr);
    wait_traced(&envoy, &up, "trace policy over mTLS").await?;
    assert_eq!(connected(&cp, "edge-1").len(), 1);

    // Another proxy claiming edge-2 with edge-1's certificate gets nothing.
    let impostor = Envoy::start(
        &cp,
        up.addr.port(),
        mtls_envoy(&pki, "edge-2", &edge1, false),
    )
    .await?;
    wait_until(
        Duration::from_secs(20),
        "the impostor's stream refused",
        || async {
            cp.log()
                .contains(r#"node id \"edge-2\" does not match the client certificate"#)
                .then_some(())
        },
    )
    .await?;
    assert!(connected(&cp, "edge-2").is_empty());
    let reloads = impostor
        .stat(&format!(
            "extension_config_discovery.http_filter.{FILTER}.config_reload"
        ))
        .await?;
    assert_eq!(reloads, 0, "the impostor received no configuration");

    // Clients without a certificate, or with one from another CA, cannot even connect.
    let anonymous = meshwarden_e2e::Cli {
        global_args: vec!["--ca-cert".into(), pki.ca_file.display().to_string()],
        ..cp.cli()
    };
    let out = anonymous.run(&["get"]);
    assert!(
        !out.success,
        "a CLI without a client certificate is refused"
    );
    let plain = meshwarden_e2e::Cli {
        global_args: Vec::new(),
        ..cp.cli()
    };
    assert!(
        !plain.run(&["get"]).success,
        "clear text is refused on a TLS port"
    );
    Ok(())
}

#[tokio::test]
async fn with_istio_binding_a_sidecar_is_served_for_its_own_namespace_only() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let cp = mtls_control_plane_with(&pki, &["--xds-node-binding".into(), "istio".into()]).await?;
    let up = EchoUpstream::start().await?;
    let web = pki.client("web", &["spiffe://cluster.local/ns/shop/sa/web"]);
    let sidecar = "sidecar~127.0.0.1~web-0.shop~shop.svc.cluster.local";
    let envoy = Envoy::start(&cp, up.addr.port(), mtls_envoy(&pki, sidecar, &web, true)).await?;
    let applied = cp.cli().apply_yaml(&trace_policy("t", "formats: [w3c]"));
    assert!(applied.success, "{}", applied.stderr);
    wait_traced(&envoy, &up, "trace policy to an Istio-bound sidecar").await?;
    assert_eq!(connected(&cp, sidecar).len(), 1);

    // The same certificate claiming a sidecar of another namespace gets nothing.
    let other = "sidecar~127.0.0.1~pay-0.payments~payments.svc.cluster.local";
    let impostor = Envoy::start(&cp, up.addr.port(), mtls_envoy(&pki, other, &web, false)).await?;
    wait_until(
        Duration::from_secs(20),
        "the other namespace's stream refused",
        || async {
            cp.log()
                .contains(r#"claims namespace \"payments\""#)
                .then_some(())
        },
    )
    .await?;
    assert!(connected(&cp, other).is_empty());
    let reloads = impostor
        .stat(&format!(
            "extension_config_discovery.http_filter.{FILTER}.config_reload"
        ))
        .await?;
    assert_eq!(reloads, 0, "the impostor received no configuration");
    Ok(())
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_without_dropping_streams(
) -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let cp = mtls_control_plane(&pki).await?;
    let up = EchoUpstream::start().await?;
    let edge1 = pki.client("edge-1", &["edge-1"]);
    let envoy = Envoy::start(
        &cp,
        up.addr.port(),
        mtls_envoy(&pki, "edge-1", &edge1, true),
    )
    .await?;
    let before = connected(&cp, "edge-1");
    assert_eq!(before.len(), 1);
    let xds_connections = "cluster.meshwarden_xds.upstream_cx_total";
    let connections = envoy.stat(xds_connections).await?;

    let grpc = pki.connector(Some(&edge1), b"h2")?;
    let http = pki.connector(None, b"http/1.1")?;
    let old_grpc = server_certificate(&grpc, cp.grpc_port).await?;
    let old_http = server_certificate(&http, cp.http_port).await?;
    assert_eq!(old_grpc, old_http, "both ports serve the same certificate");

    pki.rotate_server();
    wait_until(
        Duration::from_secs(10),
        "the new certificate on both ports",
        || async {
            let grpc = server_certificate(&grpc, cp.grpc_port).await.ok()?;
            let http = server_certificate(&http, cp.http_port).await.ok()?;
            (grpc != old_grpc && http != old_http).then_some(())
        },
    )
    .await?;
    assert!(cp.log().contains("TLS certificate reloaded"));

    // The open stream carries on: same stream, same connection, and it still gets pushes.
    let applied = cp
        .cli()
        .apply_yaml(&trace_policy("after-rotation", "formats: [w3c]"));
    assert!(applied.success, "{}", applied.stderr);
    wait_traced(&envoy, &up, "a push after the rotation").await?;
    let after = connected(&cp, "edge-1");
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0]["connectedAtUnixMs"], before[0]["connectedAtUnixMs"],
        "the xDS stream was not reopened"
    );
    assert_eq!(
        envoy.stat(xds_connections).await?,
        connections,
        "no new connection"
    );
    Ok(())
}

/// A token file: a viewer, an editor limited to `team-a-` FaultPolicies, and an admin,
/// with tokens `<name>-token`.
pub(crate) fn token_file(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use sha2::{Digest, Sha256};
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let path = dir.join("tokens.yaml");
    std::fs::write(
        &path,
        format!(
            "users:\n\
             - {{name: viewer, sha256: {}, role: viewer}}\n\
             - {{name: team-a, sha256: {}, role: editor, kinds: [FaultPolicy], namePrefixes: [team-a-]}}\n\
             - {{name: admin, sha256: {}, role: admin}}\n",
            hash("viewer-token"),
            hash("team-a-token"),
            hash("admin-token")
        ),
    )?;
    Ok(path)
}

fn fault(name: &str) -> String {
    policy(
        "FaultPolicy",
        name,
        "abort: {httpStatus: 503, percentage: {value: 1}}",
    )
}

/// Applies `yaml` (one JSON document) over gRPC with `token` and returns the status code.
async fn apply_code(
    cp: &ControlPlane,
    token: Option<&str>,
    yaml: &str,
) -> anyhow::Result<tonic::Code> {
    use meshwarden_cp::api::pb;
    let json = serde_json::to_string(&serde_yaml::from_str::<Value>(yaml)?)?;
    let mut client =
        pb::policy_service_client::PolicyServiceClient::connect(cp.cli().server.clone()).await?;
    let mut request = tonic::Request::new(pb::ApplyRequest {
        documents_json: vec![json],
        ..Default::default()
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    Ok(match client.apply(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    })
}

#[tokio::test]
async fn api_callers_need_credentials_and_a_role_allowing_the_call_and_every_attempt_is_audited(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = token_file(dir.path())?;
    let cp = ControlPlane::start_with_args(
        vec![
            "--token-file".into(),
            tokens.display().to_string(),
            "--reload-interval".into(),
            "0.2".into(),
        ],
        None,
        Vec::new(),
    )
    .await?;
    let as_user = |token: &str| cp.cli().with_args(&["--token".into(), token.into()]);

    // No credentials, or a wrong token: UNAUTHENTICATED.
    assert_eq!(
        apply_code(&cp, None, &fault("team-a-x")).await?,
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        apply_code(&cp, Some("guess"), &fault("team-a-x")).await?,
        tonic::Code::Unauthenticated
    );
    let out = cp.cli().run(&["get"]);
    assert!(
        !out.success && out.stderr.contains("credentials required"),
        "{}",
        out.stderr
    );

    // A viewer reads but does not write.
    assert_eq!(
        apply_code(&cp, Some("viewer-token"), &fault("team-a-x")).await?,
        tonic::Code::PermissionDenied
    );
    let out = as_user("viewer-token").apply_yaml(&fault("team-a-x"));
    assert!(
        !out.success && out.stderr.contains("needs editor"),
        "{}",
        out.stderr
    );
    assert!(as_user("viewer-token").run(&["get"]).success);
    assert!(as_user("viewer-token").run(&["status"]).success);

    // An editor limited to team-a- FaultPolicies writes its own, not another team's.
    let team_a = as_user("team-a-token");
    let out = team_a.apply_yaml(&fault("team-a-x"));
    assert!(out.success, "{}", out.stderr);
    let out = team_a.apply_yaml(&fault("team-b-x"));
    assert!(!out.success, "another team's name is refused");
    assert!(
        out.stderr
            .contains(r#"apply of FaultPolicy "team-b-x" refused"#)
            && out.stderr.contains("team-a-*"),
        "{}",
        out.stderr
    );
    let admin = as_user("admin-token");
    assert!(admin.apply_yaml(&fault("team-b-x")).success);
    let out = team_a.run(&["delete", "fault", "team-b-x"]);
    assert!(
        !out.success && out.stderr.contains("team-a-*"),
        "{}",
        out.stderr
    );
    let out = team_a.apply_yaml(&policy("TracePolicy", "team-a-t", "formats: [w3c]"));
    assert!(
        !out.success && out.stderr.contains("may only write FaultPolicy"),
        "{}",
        out.stderr
    );
    let changed = policy(
        "FaultPolicy",
        "team-a-x",
        "abort: {httpStatus: 500, percentage: {value: 2}}",
    );
    assert!(team_a.apply_yaml(&changed).success);

    // Every attempt is in the audit trail, in order, with identity, versions and result.
    let out = as_user("viewer-token").run(&["audit", "-o", "json"]);
    assert!(out.success, "{}", out.stderr);
    let trail: Vec<Value> = serde_json::from_str(&out.stdout)?;
    let row = |e: &Value| {
        format!(
            "{} {} {}/{} {} {}",
            e["identity"].as_str().unwrap(),
            e["action"].as_str().unwrap(),
            e["kind"].as_str().unwrap(),
            e["name"].as_str().unwrap(),
            e["result"].as_str().unwrap(),
            e["code"].as_str().unwrap()
        )
    };
    let rows: Vec<String> = trail.iter().map(row).collect();
    assert_eq!(
        rows,
        [
            "anonymous apply FaultPolicy/team-a-x refused UNAUTHENTICATED",
            "anonymous apply FaultPolicy/team-a-x refused UNAUTHENTICATED",
            "viewer apply FaultPolicy/team-a-x refused PERMISSION_DENIED",
            "viewer apply FaultPolicy/team-a-x refused PERMISSION_DENIED",
            "team-a apply FaultPolicy/team-a-x created OK",
            "team-a apply FaultPolicy/team-b-x refused PERMISSION_DENIED",
            "admin apply FaultPolicy/team-b-x created OK",
            "team-a delete FaultPolicy/team-b-x refused PERMISSION_DENIED",
            "team-a apply TracePolicy/team-a-t refused PERMISSION_DENIED",
            "team-a apply FaultPolicy/team-a-x configured OK",
        ]
    );
    let created = &trail[4];
    let configured = &trail[9];
    assert_eq!(created["oldVersion"], "");
    assert_eq!(configured["oldVersion"], created["newVersion"]);
    assert_ne!(configured["newVersion"], configured["oldVersion"]);
    assert_eq!(
        trail[7]["oldVersion"], trail[6]["newVersion"],
        "a refused delete names what it would have removed"
    );
    assert!(cp.log().contains("audit"), "audit entries are logged");

    // Tokens rotate without a restart: the file is read again when it changes.
    let old = std::fs::read_to_string(&tokens)?;
    let hash = |t: &str| {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(t.as_bytes()))
    };
    std::fs::write(
        &tokens,
        old.replace(&hash("admin-token"), &hash("rotated-admin-token")),
    )?;
    wait_until(
        Duration::from_secs(10),
        "the rotated token accepted",
        || async {
            as_user("rotated-admin-token")
                .run(&["get"])
                .success
                .then_some(())
        },
    )
    .await?;
    assert!(
        !as_user("admin-token").run(&["get"]).success,
        "the old token is gone"
    );
    Ok(())
}

/// `identity action kind/name result code` of each audit entry, oldest first.
fn audit_rows(cli: &meshwarden_e2e::Cli) -> anyhow::Result<Vec<String>> {
    let out = cli.run(&["audit", "-o", "json"]);
    anyhow::ensure!(out.success, "{}", out.stderr);
    let trail: Vec<Value> = serde_json::from_str(&out.stdout)?;
    Ok(trail
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            format!(
                "{} {} {}/{} {} {}",
                s("identity"),
                s("action"),
                s("kind"),
                s("name"),
                s("result"),
                s("code")
            )
        })
        .collect())
}

#[tokio::test]
async fn every_halt_and_resume_accepted_or_refused_is_audited() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = token_file(dir.path())?;
    let cp = ControlPlane::start_with_args(
        vec!["--token-file".into(), tokens.display().to_string()],
        None,
        Vec::new(),
    )
    .await?;
    let as_user = |token: &str| cp.cli().with_args(&["--token".into(), token.into()]);

    assert!(!cp.cli().run(&["halt"]).success, "no credentials");
    let out = as_user("viewer-token").run(&["halt", "fault", "--name", "gameday"]);
    assert!(
        !out.success && out.stderr.contains("needs editor"),
        "{}",
        out.stderr
    );
    let out = as_user("team-a-token").run(&["halt", "fault", "--name", "Bad Name"]);
    assert!(!out.success, "an invalid halt name is refused");
    let team_a = as_user("team-a-token");
    let out = team_a.run(&[
        "halt",
        "fault",
        "--name",
        "gameday",
        "--reason",
        "incident 7",
    ]);
    assert!(out.success, "{}", out.stderr);
    assert!(!as_user("viewer-token").run(&["resume", "gameday"]).success);
    let out = team_a.run(&["resume", "gameday"]);
    assert!(out.success, "{}", out.stderr);
    let out = as_user("admin-token").run(&["resume"]);
    assert!(out.success, "{}", out.stderr);

    let rows = audit_rows(&as_user("viewer-token"))?;
    assert_eq!(
        rows,
        [
            "anonymous halt FaultPolicy,MirrorPolicy/default refused UNAUTHENTICATED",
            "viewer halt FaultPolicy/gameday refused PERMISSION_DENIED",
            "team-a halt FaultPolicy/Bad Name refused INVALID_ARGUMENT",
            "team-a halt FaultPolicy/gameday halted OK",
            "viewer resume /gameday refused PERMISSION_DENIED",
            "team-a resume /gameday resumed OK",
            "admin resume /* resumed OK",
        ]
    );
    Ok(())
}

/// Applies `documents` (JSON texts) in one request over gRPC: the error status, if any.
async fn apply_documents(
    cp: &ControlPlane,
    documents: Vec<String>,
) -> anyhow::Result<Option<tonic::Status>> {
    use meshwarden_cp::api::pb;
    let mut client =
        pb::policy_service_client::PolicyServiceClient::connect(cp.cli().server.clone()).await?;
    let request = pb::ApplyRequest {
        documents_json: documents,
        ..Default::default()
    };
    Ok(client.apply(request).await.err())
}

/// A TracePolicy document as JSON, with `spec` (JSON) spliced in.
fn trace_json(name: &str, spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"meshwarden.dev/v1alpha1","kind":"TracePolicy","metadata":{{"name":"{name}"}},"spec":{spec}}}"#
    )
}

#[tokio::test]
async fn hostile_documents_get_a_clear_error_and_nothing_is_applied() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let good = trace_json("good", "{}");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: [(&str, String, &str); 6] = [
        (
            "deeply nested",
            trace_json("deep", &format!(r#"{{"formats":{deep}}}"#)),
            "recursion limit",
        ),
        (
            "huge number",
            trace_json("huge", r#"{"samplingPercentage":1e999}"#),
            "number out of range",
        ),
        (
            "huge integer",
            trace_json(
                "int",
                r#"{"samplingPercentage":123456789012345678901234567890}"#,
            ),
            "samplingPercentage",
        ),
        (
            "oversized",
            trace_json(
                "big",
                &format!(r#"{{"responseHeader":"{}"}}"#, "x".repeat(1_100_000)),
            ),
            "bytes per policy document",
        ),
        (
            "regex over the compiled-size limit",
            trace_json(
                "re",
                r#"{"match":{"path":{"regex":"(((a{100}){100}){100})"}}}"#,
            ),
            "regex",
        ),
        ("not a document", "[1,2,3]".to_string(), "document 2"),
    ];
    for (what, hostile, want) in cases {
        let status = apply_documents(&cp, vec![good.clone(), hostile])
            .await?
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(
            matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange
            ),
            "{what}: {status:?}"
        );
        assert!(
            status.message().contains(want),
            "{what}: {}",
            status.message()
        );
    }
    // The valid document beside each hostile one was never applied.
    let listed = cp.cli().run(&["get", "-o", "json"]);
    assert!(listed.success, "{}", listed.stderr);
    assert!(
        !listed.stdout.contains("good"),
        "partial apply: {}",
        listed.stdout
    );

    // Through the CLI: non-UTF-8 bytes and a YAML "billion laughs" are refused, fast.
    let dir = tempfile::tempdir()?;
    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, b"kind: TracePolicy\nmetadata: {name: \xff\xfe}\n")?;
    let out = cp
        .cli()
        .run(&["apply", "-f", &binary.display().to_string()]);
    assert!(
        !out.success && out.stderr.contains("not UTF-8"),
        "{}",
        out.stderr
    );
    let laughs = dir.path().join("laughs.yaml");
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, c) in ('b'..='i').enumerate() {
        let prev = (b'a' + i as u8) as char;
        text += &format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        );
    }
    std::fs::write(&laughs, text)?;
    let started = std::time::Instant::now();
    let out = cp
        .cli()
        .run(&["apply", "-f", &laughs.display().to_string()]);
    assert!(
        !out.success && out.stderr.contains("YAML aliases"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(cp.http_get("/healthz").await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn an_mtls_client_gets_the_role_its_certificate_is_listed_with() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("users.yaml");
    std::fs::write(
        &tokens,
        "users:\n- {name: ops-cli, identity: \"spiffe://test/ops/cli\", role: viewer}\n",
    )?;
    let cp = mtls_control_plane_with(&pki, &["--token-file".into(), tokens.display().to_string()])
        .await?;
    assert!(
        cp.cli().run(&["get"]).success,
        "the certificate authenticates"
    );
    let out = cp.cli().apply_yaml(&fault("x"));
    assert!(
        !out.success && out.stderr.contains(r#""ops-cli" is a viewer"#),
        "{}",
        out.stderr
    );
    let stranger = pki.client("stranger", &["spiffe://test/other"]);
    let as_stranger = meshwarden_e2e::Cli {
        global_args: pki.cli_args(&stranger),
        ..cp.cli()
    };
    let out = as_stranger.run(&["get"]);
    assert!(
        !out.success && out.stderr.contains("not in the token file"),
        "{}",
        out.stderr
    );
    let trail = cp.cli().run(&["audit", "-o", "json"]);
    let trail: Vec<Value> = serde_json::from_str(&trail.stdout)?;
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0]["identity"], "ops-cli");
    assert_eq!(trail[0]["code"], "PERMISSION_DENIED");
    Ok(())
}

#[tokio::test]
async fn without_mtls_an_xds_allow_list_decides_which_proxies_are_served() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with_args(
        vec!["--xds-allow-node".into(), "edge-*".into()],
        None,
        Vec::new(),
    )
    .await?;
    let up = EchoUpstream::start().await?;
    let listed = EnvoyOptions {
        node_id: "edge-1".into(),
        ..Default::default()
    };
    let _served = Envoy::start(&cp, up.addr.port(), listed).await?;
    let unlisted = EnvoyOptions {
        node_id: "intruder".into(),
        wait_for_config: false,
        ..Default::default()
    };
    let refused = Envoy::start(&cp, up.addr.port(), unlisted).await?;
    wait_until(
        Duration::from_secs(20),
        "the unlisted proxy refused",
        || async {
            cp.log()
                .contains(r#"node \"intruder\" (cluster \"test\") is not on the xDS allow-list"#)
                .then_some(())
        },
    )
    .await?;
    assert_eq!(connected(&cp, "edge-1").len(), 1);
    assert!(connected(&cp, "intruder").is_empty());
    let reloads = refused
        .stat(&format!(
            "extension_config_discovery.http_filter.{FILTER}.config_reload"
        ))
        .await?;
    assert_eq!(reloads, 0, "the unlisted proxy received no configuration");
    Ok(())
}
