//! Helpers shared by the e2e tests: independent oracles for the headers under test.

/// Checks a W3C `traceparent` (version 00) independently of the filter's own parser and
/// returns its (trace id, parent id, flags).
pub fn parse_traceparent(v: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    match parts.as_slice() {
        ["00", t, p, f] if hex(t, 32) && hex(p, 16) && hex(f, 2) && nonzero(t) && nonzero(p) => {
            Some((t.to_string(), p.to_string(), f.to_string()))
        }
        _ => None,
    }
}

/// Checks a UUID (8-4-4-4-12 hex).
pub fn is_uuid(v: &str) -> bool {
    let groups: Vec<&str> = v.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A policy document of `kind` with `spec` (YAML, unindented).
pub fn policy(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: meshwarden.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n{}\n",
        indent(spec, 2)
    )
}

/// A TracePolicy document.
pub fn trace_policy(name: &str, spec: &str) -> String {
    policy("TracePolicy", name, spec)
}

fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn oracles_accept_and_reject() {
    assert!(parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some());
    assert!(parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    assert!(parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
    assert!(is_uuid("3f2a6c1e-8b7d-4e2a-9c4b-1d2e3f4a5b6c"));
    assert!(!is_uuid("not-a-uuid"));
}
