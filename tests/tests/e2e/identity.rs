//! Caller identity a client cannot forge (issue 12): on a listener requiring client
//! certificates, a fault scoped to one SPIFFE identity fires for the client presenting that
//! certificate only; a forged `x-envoy-downstream-service-cluster` header selects nothing,
//! and header-requested faults are honoured only from the identities a policy names.

use crate::support::policy;
use meshwarden_e2e::tls::{https_get_with, TestPki};
use meshwarden_e2e::{wait_until, ControlPlane, EchoUpstream, Envoy, EnvoyOptions};
use std::time::Duration;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const API: &str = "spiffe://cluster.local/ns/shop/sa/api";
const QA: &str = "spiffe://cluster.local/ns/qa/sa/bot";

#[tokio::test]
async fn a_fault_scoped_to_a_spiffe_identity_fires_for_that_certificate_only() -> anyhow::Result<()>
{
    let pki = TestPki::new()?;
    let cp = ControlPlane::start().await?;
    let up = EchoUpstream::start().await?;
    let envoy = Envoy::start(
        &cp,
        up.addr.port(),
        EnvoyOptions {
            listener_tls: Some(pki.listener_tls()),
            ..Default::default()
        },
    )
    .await?;
    let web = pki.connector(Some(&pki.client("web", &[WEB])), b"http/1.1")?;
    let api = pki.connector(Some(&pki.client("api", &[API])), b"http/1.1")?;
    let qa = pki.connector(Some(&pki.client("qa", &[QA])), b"http/1.1")?;
    let port = envoy.listen_port;

    let applied = cp.cli().apply_yaml(&format!(
        "{}---\n{}",
        policy(
            "FaultPolicy",
            "web-only",
            &format!(
                "match: {{path: {{exact: /scoped}}}}\nabort: {{httpStatus: 503, percentage: {{value: 100}}}}\nsource: {{identities: [\"{WEB}\"]}}"
            ),
        ),
        policy(
            "FaultPolicy",
            "qa-may-ask",
            "match: {path: {exact: /ask}}\nheaderControl: {enabled: true, identities: [\"spiffe://cluster.local/ns/qa/*\"]}",
        ),
    ));
    assert!(applied.success, "{}", applied.stderr);
    wait_until(
        Duration::from_secs(20),
        "the identity-scoped fault in force",
        || async {
            let (status, _) = https_get_with(&web, port, "/scoped", &[]).await.ok()?;
            (status == 503).then_some(())
        },
    )
    .await?;

    // Another identity, even with the header naming the targeted caller, is not faulted.
    let forged = [("x-envoy-downstream-service-cluster", "web")];
    for _ in 0..5 {
        assert_eq!(https_get_with(&web, port, "/scoped", &[]).await?.0, 503);
        assert_eq!(https_get_with(&api, port, "/scoped", &forged).await?.0, 200);
        assert_eq!(https_get_with(&qa, port, "/scoped", &[]).await?.0, 200);
    }

    // Header control: honoured from the qa namespace, ignored from anyone else.
    let ask = [("x-envoy-fault-abort-request", "418")];
    assert_eq!(https_get_with(&qa, port, "/ask", &ask).await?.0, 418);
    assert_eq!(https_get_with(&web, port, "/ask", &ask).await?.0, 200);
    assert_eq!(https_get_with(&api, port, "/ask", &ask).await?.0, 200);
    let refused = envoy
        .policy_stat(
            "meshwarden_fault_header_requests_refused_total",
            "qa-may-ask",
        )
        .await?;
    assert_eq!(refused, 2, "the two ignored header requests are counted");

    // The listener requires a certificate: a client without one gets no answer at all.
    let anonymous = pki.connector(None, b"http/1.1")?;
    assert!(
        https_get_with(&anonymous, port, "/scoped", &forged)
            .await
            .is_err(),
        "a client without a certificate is refused by the handshake"
    );
    Ok(())
}
