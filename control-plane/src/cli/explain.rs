//! `meshwarden explain`: which policies a proxy holds, which match a request and what each
//! would do. The CLI reads the policies, halts and (for `--node-id`) the proxy's identity from
//! the control plane and evaluates with [`crate::explain`].

use super::{client, output, ExplainArgs, Output};
use crate::api::pb;
use crate::explain::{explain, Draw, Effect, Explanation, Reach, RequestView};
use crate::policy_set::{PolicySet, StoredPolicy};
use crate::xds::ProxyNode;
use anyhow::Context;
use meshwarden_common::{NodeInfo, PolicyDocument};

/// Explains one request on one proxy.
pub async fn run(server: &str, args: ExplainArgs) -> anyhow::Result<()> {
    let request = request(&args)?;
    let node = node(server, &args).await?;
    let set = policy_set(server).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let e = explain(&set, &node, &request, now)?;
    match args.output {
        Output::Json => output::println(&serde_json::to_string_pretty(&e)?),
        Output::Yaml => output::print(&serde_yaml::to_string(&e)?),
        Output::Table => output::print(&output::terminal_safe_lines(&render(&e))),
    }
}

fn request(args: &ExplainArgs) -> anyhow::Result<RequestView> {
    let headers = args
        .headers
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("-H {h:?}: expected name:value"))?;
            Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(RequestView {
        method: args.method.to_ascii_uppercase(),
        path: args.path.clone(),
        authority: args.authority.clone().unwrap_or_default(),
        headers,
    })
}

/// The proxy: as given by `--cluster/--label/--namespace`, or as the control plane knows the
/// proxy `--node-id`.
async fn node(server: &str, args: &ExplainArgs) -> anyhow::Result<NodeInfo> {
    let id = args.node_id.clone().unwrap_or_default();
    if args.cluster.is_some() || !args.labels.is_empty() || args.namespace.is_some() {
        let labels = args
            .labels
            .iter()
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .with_context(|| format!("--label {l:?}: expected key=value"))
            })
            .collect::<anyhow::Result<_>>()?;
        return Ok(NodeInfo {
            id,
            cluster: args.cluster.clone().unwrap_or_default(),
            labels,
            namespace: args.namespace.clone(),
        });
    }
    anyhow::ensure!(
        !id.is_empty(),
        "say which proxy: --node-id ID (a proxy the control plane knows), or the --cluster, --label and --namespace it would have"
    );
    let proxies = client::proxies(server)
        .await?
        .list_proxies(pb::ListProxiesRequest {})
        .await
        .map_err(client::status_error)?
        .into_inner()
        .proxies;
    let p = proxies
        .iter()
        .filter(|p| p.node_id == id)
        .max_by_key(|p| (p.connected, p.connected_at_unix_ms))
        .with_context(|| {
            format!("no proxy {id:?} is known to the control plane; give the --cluster, --label and --namespace it would have instead")
        })?;
    let labels = p.labels.clone().into_iter().collect();
    Ok(ProxyNode::from_parts(&p.node_id, &p.cluster, labels).info)
}

/// The stored policies and halts.
async fn policy_set(server: &str) -> anyhow::Result<PolicySet> {
    let mut api = client::policies(server).await?;
    let list = api
        .list(pb::ListRequest::default())
        .await
        .map_err(client::status_error)?
        .into_inner();
    let mut policies = Vec::with_capacity(list.policies.len());
    for p in list.policies {
        let value = serde_json::from_str(&p.document_json)
            .with_context(|| format!("{}/{}: unreadable document", p.kind, p.name))?;
        let doc = PolicyDocument::from_value(&value)
            .map_err(|e| anyhow::anyhow!("{}/{}: {e}", p.kind, p.name))?;
        policies.push(StoredPolicy {
            doc,
            version: p.version,
            generation: p.generation,
            updated_unix_ms: p.updated_unix_ms,
            revision: p.revision,
        });
    }
    let halts = super::halt::list(server)
        .await?
        .into_iter()
        .map(|h| {
            let created = h.created_unix_ms;
            crate::api::halts::from_pb(h, created).map_err(|s| anyhow::anyhow!("{}", s.message()))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(PolicySet {
        generation: list.generation,
        policies,
        halts,
    })
}

/// One block per filter, one line per policy.
fn render(e: &Explanation) -> String {
    let mut out = format!(
        "proxy {} (cluster {})\nrequest {} {}{}\n",
        dash(&e.node_id),
        dash(&e.cluster),
        e.request.method,
        e.request.path,
        if e.request.authority.is_empty() {
            String::new()
        } else {
            format!(" (authority {})", e.request.authority)
        }
    );
    for f in &e.filters {
        let rule = match f.evaluation {
            crate::explain::Evaluation::FirstMatch => "first matching policy applies",
            crate::explain::Evaluation::EveryMatch => "every matching policy applies",
        };
        let reach = match f.reached {
            Reach::Yes => "",
            Reach::Maybe => "; reached unless an earlier filter answers",
            Reach::No => "; NOT REACHED: an earlier filter answers",
        };
        let halted = if f.halted {
            "; HALTED on this proxy"
        } else {
            ""
        };
        out.push_str(&format!(
            "\n{} ({}: {rule}{reach}{halted})\n",
            f.filter, f.kind
        ));
        if f.policies.is_empty() {
            out.push_str("  (no policies)\n");
        }
        for p in &f.policies {
            let what = match &p.effect {
                Some(effect) => format!("APPLIES: {}", effect_words(effect)),
                None => p.notes.join("; "),
            };
            out.push_str(&format!("  {:<24} {what}\n", p.name));
        }
    }
    out
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn effect_words(effect: &Effect) -> String {
    match effect {
        Effect::Trace {
            outcome,
            sets,
            removes,
            sampled,
            sampling_percentage,
            export,
        } => {
            let sampled = match sampled {
                Some(true) => "sampled".to_string(),
                Some(false) => "not sampled".to_string(),
                None => format!("sampled with probability {sampling_percentage}%"),
            };
            let removes = if removes.is_empty() {
                String::new()
            } else {
                format!("; removes {}", removes.join(", "))
            };
            let export = export
                .as_ref()
                .map(|e| format!("; span exported ({e})"))
                .unwrap_or_default();
            format!(
                "trace {outcome}; sets {}{removes}; {sampled}{export}",
                sets.join(", ")
            )
        }
        Effect::RateLimit {
            limit,
            bucket,
            max_concurrent,
            when_limited,
            remaining_tokens,
            ..
        } => {
            let mut parts = Vec::new();
            if let Some(l) = limit {
                parts.push(format!("limit {l}"));
            }
            if let Some(n) = max_concurrent {
                parts.push(format!("at most {n} in flight"));
            }
            if !bucket.is_empty() {
                let key: Vec<String> = bucket.iter().map(|(k, v)| format!("{k}={v}")).collect();
                parts.push(format!("bucket {}", key.join(",")));
            }
            parts.push(when_limited.clone());
            if limit.is_some() {
                parts.push(format!("remaining tokens {remaining_tokens}"));
            }
            parts.join("; ")
        }
        Effect::Fault {
            delay,
            abort,
            response_delay,
            response_override,
            dry_run,
        } => {
            let draws: Vec<String> = [delay, abort, response_delay, response_override]
                .into_iter()
                .flatten()
                .map(draw_words)
                .collect();
            let dry = if *dry_run {
                " (dry run: counted, not injected)"
            } else {
                ""
            };
            format!("{}{dry}", draws.join("; "))
        }
        Effect::Mirror { targets } => targets
            .iter()
            .map(|t| {
                let this = match (t.selected, t.skipped) {
                    (Some(true), _) => "copied".to_string(),
                    (Some(false), Some(why)) => format!("not copied ({why})"),
                    (Some(false), None) => "not copied".to_string(),
                    (None, _) => "copied at random".to_string(),
                };
                format!("copy to {} at {}% -> {this}", t.target, t.percentage)
            })
            .collect::<Vec<_>>()
            .join("; "),
        Effect::Capture {
            sampled,
            sampling_percentage,
            max_per_second,
            headers,
            report,
        } => {
            let sampling = match sampled {
                Some(true) => "captured".to_string(),
                Some(false) => "not captured (0%)".to_string(),
                None => format!("captured at random ({sampling_percentage}%)"),
            };
            let mut parts = vec![sampling, format!("at most {max_per_second}/s per proxy")];
            if !headers.is_empty() {
                parts.push(format!("headers {}", headers.join(", ")));
            }
            parts.push(format!("reported to {report}"));
            parts.join("; ")
        }
        Effect::CircuitBreaker {
            breaker,
            opens_when,
            while_open,
            dry_run,
            ..
        } => {
            let mut parts = Vec::new();
            if !breaker.is_empty() {
                let key: Vec<String> = breaker.iter().map(|(k, v)| format!("{k}={v}")).collect();
                parts.push(format!("breaker {}", key.join(",")));
            }
            parts.push(format!("opens when {opens_when}"));
            if *dry_run {
                parts.push("dry run: never answers; counted as shadow_short_circuited".into());
            } else {
                parts.push(format!("while open {while_open}"));
            }
            parts.join("; ")
        }
    }
}

fn draw_words(d: &Draw) -> String {
    let this = match d.selected {
        Some(true) => "this request: yes",
        Some(false) => "this request: no",
        None => "this request: at random",
    };
    format!("{} at {}% -> {this}", d.what, d.percentage)
}
