//! `meshwarden halt` / `meshwarden resume`: the big red button, and how halts are shown by
//! `get` and `status`.

use super::{client, output, table, HaltArgs, ResumeArgs};
use crate::api::pb;
use anyhow::Context;
use meshwarden_common::Selector;
use serde::Serialize;
use serde_json::Value;

/// Puts a halt in force and says what it covers.
pub async fn halt(server: &str, args: HaltArgs) -> anyhow::Result<()> {
    let selector = selector(&args)?;
    let request = pb::HaltRequest {
        halt: Some(pb::Halt {
            name: args.name.unwrap_or_default(),
            kinds: args.kinds,
            selector_json: serde_json::to_string(&selector)?,
            reason: args.reason.unwrap_or_default(),
            created_unix_ms: 0,
        }),
    };
    let response = client::policies(server)
        .await?
        .halt(request)
        .await
        .map_err(client::status_error)?
        .into_inner();
    let halt = response
        .halt
        .context("the control plane answered without the halt")?;
    output::println(&format!(
        "halt/{} in force: {} suspended on {}",
        output::terminal_safe(&halt.name),
        kinds(&halt.kinds),
        output::terminal_safe(&scope(&halt.selector_json))
    ))
}

/// Lifts one halt, or all.
pub async fn resume(server: &str, args: ResumeArgs) -> anyhow::Result<()> {
    let response = client::policies(server)
        .await?
        .resume(pb::ResumeRequest {
            name: args.name.clone().unwrap_or_default(),
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    match (response.resumed.is_empty(), args.name) {
        (true, Some(name)) => anyhow::bail!("no halt named {name:?} is in force"),
        (true, None) => output::println("no halt was in force"),
        (false, _) => {
            for name in &response.resumed {
                output::println(&format!("halt/{} lifted", output::terminal_safe(name)))?;
            }
            Ok(())
        }
    }
}

/// The halts in force.
pub async fn list(server: &str) -> anyhow::Result<Vec<pb::Halt>> {
    Ok(client::policies(server)
        .await?
        .list_halts(pb::ListHaltsRequest {})
        .await
        .map_err(client::status_error)?
        .into_inner()
        .halts)
}

/// A halt as `get -o json|yaml` and `status -o json` show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HaltView {
    name: String,
    kinds: Vec<String>,
    selector: Value,
    reason: String,
    created_unix_ms: i64,
}

impl From<&pb::Halt> for HaltView {
    fn from(h: &pb::Halt) -> Self {
        Self {
            name: h.name.clone(),
            kinds: h.kinds.clone(),
            selector: serde_json::from_str(&h.selector_json).unwrap_or(Value::Null),
            reason: h.reason.clone(),
            created_unix_ms: h.created_unix_ms,
        }
    }
}

/// A table of halts: name, kinds, which proxies, age, reason.
pub fn render(halts: &[pb::Halt]) -> String {
    let rows: Vec<Vec<String>> = halts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                kinds(&h.kinds),
                scope(&h.selector_json),
                table::age(h.created_unix_ms),
                h.reason.clone(),
            ]
        })
        .collect();
    table::render(&["HALT", "KINDS", "PROXIES", "AGE", "REASON"], &rows)
}

/// `fault,mirror` from `FaultPolicy, MirrorPolicy`.
fn kinds(kinds: &[String]) -> String {
    kinds
        .iter()
        .map(|k| meshwarden_common::Kind::parse(k).map_or(k.as_str(), |k| k.filter()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Which proxies a selector (as JSON) covers, in words.
fn scope(selector_json: &str) -> String {
    match serde_json::from_str::<Selector>(selector_json) {
        Ok(s) if s == Selector::default() => "every proxy".to_string(),
        Ok(_) => format!("proxies with {selector_json}"),
        Err(_) => selector_json.to_string(),
    }
}

/// The selector given by the flags.
fn selector(args: &HaltArgs) -> anyhow::Result<Selector> {
    let mut labels = std::collections::BTreeMap::new();
    for pair in args.selector.iter().flat_map(|s| s.split(',')) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--selector {pair:?}: expected key=value[,key=value...]"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(Selector {
        node_ids: args.node_ids.clone(),
        clusters: args.clusters.clone(),
        labels,
        namespaces: args.namespaces.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(selector: &[&str]) -> HaltArgs {
        HaltArgs {
            kinds: vec![],
            name: None,
            reason: None,
            selector: selector.iter().map(|s| s.to_string()).collect(),
            node_ids: vec![],
            clusters: vec!["shop".into()],
            namespaces: vec![],
        }
    }

    #[test]
    fn selector_flags_become_a_policy_selector() {
        let s = selector(&args(&["zone=eu,tier=web", "app=x"])).unwrap();
        assert_eq!(s.clusters, ["shop"]);
        assert_eq!(s.labels.len(), 3);
        let err = selector(&args(&["zone"])).unwrap_err().to_string();
        assert!(err.starts_with("--selector \"zone\""), "{err}");
    }

    #[test]
    fn table_says_which_proxies() {
        let h = pb::Halt {
            name: "default".into(),
            kinds: vec!["FaultPolicy".into(), "MirrorPolicy".into()],
            selector_json: "{}".into(),
            reason: "incident".into(),
            created_unix_ms: 0,
        };
        let out = render(&[h]);
        assert!(
            out.lines()
                .nth(1)
                .unwrap()
                .starts_with("default   fault,mirror   every proxy   -"),
            "{out}"
        );
        assert!(out.ends_with("incident\n"), "{out}");
    }
}
