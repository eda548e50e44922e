//! `meshwarden get` and `meshwarden delete`.

use super::{client, halt, output, table, DeleteArgs, GetArgs, Output};
use crate::api::pb;
use anyhow::Context;
use meshwarden_common::Kind;
use serde_json::Value;

/// Lists policies (all, or of one kind) or shows one.
pub async fn get(server: &str, args: GetArgs) -> anyhow::Result<()> {
    if args
        .kind
        .as_deref()
        .is_some_and(|k| k.eq_ignore_ascii_case("halt") || k.eq_ignore_ascii_case("halts"))
    {
        return get_halts(server, args).await;
    }
    let kind = args.kind.as_deref().map(parse_kind).transpose()?;
    let mut api = client::policies(server).await?;
    let (policies, single) = match (kind, &args.name) {
        (Some(kind), Some(name)) => {
            let request = pb::GetRequest {
                kind: kind.to_string(),
                name: name.clone(),
                revision: args.revision.unwrap_or(0),
            };
            let p = api.get(request).await.map_err(client::status_error)?;
            (vec![p.into_inner()], true)
        }
        _ => {
            let request = pb::ListRequest {
                kind: kind.map(|k| k.to_string()).unwrap_or_default(),
            };
            let list = api.list(request).await.map_err(client::status_error)?;
            (list.into_inner().policies, false)
        }
    };
    output::print(&render(&policies, single, args.output)?)?;
    if policies.is_empty() && args.output == Output::Table {
        output::eprintln("No policies found.");
    }
    // Halts are listed with every policy (table only: YAML and JSON stay applicable).
    if kind.is_none() && args.output == Output::Table {
        let halts = halt::list(server).await?;
        if !halts.is_empty() {
            output::print(&format!("\n{}", halt::render(&halts)))?;
        }
    }
    Ok(())
}

/// `get halt [NAME]`: the halts in force.
async fn get_halts(server: &str, args: GetArgs) -> anyhow::Result<()> {
    let mut halts = halt::list(server).await?;
    if let Some(name) = &args.name {
        halts.retain(|h| &h.name == name);
        anyhow::ensure!(!halts.is_empty(), "no halt named {name:?} is in force");
    }
    let views: Vec<halt::HaltView> = halts.iter().map(halt::HaltView::from).collect();
    match args.output {
        Output::Json => output::println(&serde_json::to_string_pretty(&views)?),
        Output::Yaml => output::print(&serde_yaml::to_string(&views)?),
        Output::Table if halts.is_empty() => {
            output::eprintln("No halt in force.");
            Ok(())
        }
        Output::Table => output::print(&halt::render(&halts)),
    }
}

/// Deletes one policy.
pub async fn delete(server: &str, args: DeleteArgs) -> anyhow::Result<()> {
    let kind = parse_kind(&args.kind)?;
    let request = pb::DeleteRequest {
        kind: kind.to_string(),
        name: args.name.clone(),
    };
    client::policies(server)
        .await?
        .delete(request)
        .await
        .map_err(client::status_error)?;
    output::println(&format!(
        "{}/{} deleted",
        kind.as_str().to_ascii_lowercase(),
        output::terminal_safe(&args.name)
    ))
}

pub(super) fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Kind::parse(s).with_context(|| {
        format!(
            "unknown kind {s:?}; expected one of {} (or {})",
            Kind::ALL.map(Kind::as_str).join(", "),
            Kind::ALL.map(Kind::filter).join(", ")
        )
    })
}

/// Formats policies. YAML and JSON print the documents themselves, so the output can be
/// applied again: one object (`single`) or an array / `---`-separated documents.
fn render(policies: &[pb::Policy], single: bool, output: Output) -> anyhow::Result<String> {
    if output == Output::Table {
        let rows: Vec<Vec<String>> = policies
            .iter()
            .map(|p| {
                vec![
                    p.kind.clone(),
                    p.name.clone(),
                    p.version.clone(),
                    p.revision.to_string(),
                    p.generation.to_string(),
                    table::age(p.updated_unix_ms),
                ]
            })
            .collect();
        if rows.is_empty() {
            return Ok(String::new());
        }
        return Ok(table::render(
            &["KIND", "NAME", "VERSION", "REVISION", "GENERATION", "AGE"],
            &rows,
        ));
    }
    let docs = policies
        .iter()
        .map(|p| {
            let mut doc = serde_json::from_str::<Value>(&p.document_json).with_context(|| {
                format!(
                    "control plane sent an unreadable document for {}/{}",
                    p.kind, p.name
                )
            })?;
            // The revision this copy is of: `apply` sends it back (optimistic concurrency).
            if let Some(metadata) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
                if p.revision > 0 {
                    metadata.insert("revision".into(), p.revision.into());
                }
            }
            Ok(doc)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(match (output, single) {
        (Output::Json, true) => format!("{:#}\n", docs[0]),
        (Output::Json, false) => format!("{:#}\n", Value::Array(docs)),
        _ => docs
            .iter()
            .map(serde_yaml::to_string)
            .collect::<Result<Vec<_>, _>>()?
            .join("---\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str) -> pb::Policy {
        pb::Policy {
            kind: "TracePolicy".into(),
            name: name.into(),
            document_json: format!(
                r#"{{"apiVersion":"meshwarden.dev/v1alpha1","kind":"TracePolicy","metadata":{{"name":"{name}"}},"spec":{{}}}}"#
            ),
            version: "0123456789abcdef".into(),
            generation: 3,
            updated_unix_ms: 0,
            revision: 2,
        }
    }

    #[test]
    fn table_lists_version_and_generation() {
        let out = render(&[policy("a")], false, Output::Table).unwrap();
        assert_eq!(
            out,
            "KIND          NAME   VERSION            REVISION   GENERATION   AGE\nTracePolicy   a      0123456789abcdef   2          3            -\n"
        );
    }

    #[test]
    fn yaml_and_json_output_can_be_applied_again() {
        let yaml = render(&[policy("a"), policy("b")], false, Output::Yaml).unwrap();
        let docs = crate::cli::documents::parse("out.yaml", &yaml).unwrap();
        assert_eq!(docs.len(), 2);
        for d in &docs {
            meshwarden_common::PolicyDocument::from_value(&d.value).unwrap();
            assert_eq!(d.revision, Some(2), "the revision travels with the copy");
        }
        let json = render(&[policy("a")], true, Output::Json).unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["metadata"]["name"], "a");
        let json = render(&[policy("a"), policy("b")], false, Output::Json).unwrap();
        assert_eq!(
            crate::cli::documents::parse("out.json", &json)
                .unwrap()
                .len(),
            2
        );
    }
}
