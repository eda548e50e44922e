//! `meshwarden apply -f FILE|DIR|-`.

use super::documents::{read_all, SourcedDocument};
use super::{client, output, ApplyArgs};
use crate::api::pb;
use crate::registry::DocumentRef;
use anyhow::bail;
use meshwarden_common::limits::{MAX_APPLY_REQUEST_BYTES, MAX_DOCUMENT_BYTES};
use meshwarden_common::PolicyDocument;
use prost::Message;
use std::collections::HashMap;

/// Validates locally (for a fast error naming file, document and field), then applies
/// everything in one request and prints one line per policy. Documents carrying
/// `metadata.revision` (as `get -o yaml` prints them) are applied only if their policy is
/// still at that revision, unless `--force`.
pub async fn run(server: &str, args: ApplyArgs) -> anyhow::Result<()> {
    let docs = read_all(&args.files)?;
    let request = request(&docs, args.dry_run, args.force);
    check_request(&docs, &request)?;
    let response = client::policies(server)
        .await?
        .apply(request)
        .await
        .map_err(|s| locate(&docs, client::status_error(s)))?
        .into_inner();
    output::print(&render(&response.results, args.dry_run))
}

/// The apply request of `docs`: expected revisions are sent only if a document has one.
fn request(docs: &[SourcedDocument], dry_run: bool, force: bool) -> pb::ApplyRequest {
    let expected_revisions = if docs.iter().any(|d| d.revision.is_some()) {
        docs.iter().map(|d| d.revision.unwrap_or(0)).collect()
    } else {
        Vec::new()
    };
    pb::ApplyRequest {
        documents_json: docs.iter().map(|d| d.value.to_string()).collect(),
        dry_run,
        expected_revisions,
        force,
    }
}

/// One line per policy, kubectl style: `kind/name created|configured|unchanged`, with the
/// policy's revision after the apply (not in a dry run, which assigns none).
pub(super) fn render(results: &[pb::ApplyResult], dry_run: bool) -> String {
    let mut out = String::new();
    for r in results {
        let verb = match r.outcome() {
            pb::apply_result::Outcome::Created => "created",
            pb::apply_result::Outcome::Updated => "configured",
            pb::apply_result::Outcome::Unchanged => "unchanged",
            pb::apply_result::Outcome::Unspecified => "applied",
        };
        let suffix = match (dry_run, r.revision) {
            (true, _) => " (dry run)".to_string(),
            (false, 0) => String::new(),
            (false, n) => format!(" (revision {n})"),
        };
        out.push_str(&format!(
            "{}/{} {verb}{suffix}\n",
            output::terminal_safe(&r.kind.to_ascii_lowercase()),
            output::terminal_safe(&r.name)
        ));
    }
    out
}

/// The server's checks of an apply request (sizes, validation, duplicates), run locally so
/// errors can name the file.
pub(super) fn check_request(
    docs: &[SourcedDocument],
    request: &pb::ApplyRequest,
) -> anyhow::Result<()> {
    check_sizes(docs, request)?;
    check(docs)
}

/// The server's size limits, checked locally so the error can name the file and what to do:
/// each document at most [`MAX_DOCUMENT_BYTES`] of JSON, the whole request at most
/// [`MAX_APPLY_REQUEST_BYTES`].
fn check_sizes(docs: &[SourcedDocument], request: &pb::ApplyRequest) -> anyhow::Result<()> {
    for (d, json) in docs.iter().zip(&request.documents_json) {
        if json.len() > MAX_DOCUMENT_BYTES {
            bail!(
                "{}: {}: {} bytes as JSON, more than the limit of {MAX_DOCUMENT_BYTES} bytes per policy document; make it smaller",
                d.source,
                DocumentRef::of(d.index, &d.value),
                json.len()
            );
        }
    }
    let size = request.encoded_len();
    if size > MAX_APPLY_REQUEST_BYTES {
        let mut sources: Vec<&str> = Vec::new();
        for d in docs {
            if sources.last() != Some(&d.source.as_str()) {
                sources.push(&d.source);
            }
        }
        bail!(
            "{}: {} documents make an apply request of {size} bytes, more than the limit of {MAX_APPLY_REQUEST_BYTES} bytes per apply; apply fewer files at a time, or split large files",
            sources.join(", "),
            docs.len()
        );
    }
    Ok(())
}

/// The checks the server makes, run locally so errors can name the file.
fn check(docs: &[SourcedDocument]) -> anyhow::Result<()> {
    let mut seen: HashMap<(meshwarden_common::Kind, String), &SourcedDocument> = HashMap::new();
    for d in docs {
        let doc = PolicyDocument::from_value(&d.value).map_err(|e| {
            anyhow::anyhow!("{}: {}: {e}", d.source, DocumentRef::of(d.index, &d.value))
        })?;
        let id = (doc.kind(), doc.name().as_str().to_string());
        if let Some(first) = seen.get(&id) {
            bail!(
                "{}: {}: {} {:?} is already defined in {} document {}; each policy may appear once per apply",
                d.source,
                DocumentRef::of(d.index, &d.value),
                id.0,
                id.1,
                first.source,
                first.index
            );
        }
        seen.insert(id, d);
    }
    Ok(())
}

/// Rewrites a server error starting with `document N` (N counted over the whole request) to
/// name the file and the document's position in it.
pub(super) fn locate(docs: &[SourcedDocument], err: anyhow::Error) -> anyhow::Error {
    let msg = err.to_string();
    let Some(rest) = msg.strip_prefix("document ") else {
        return err;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    match digits
        .parse::<usize>()
        .ok()
        .and_then(|n| docs.get(n.wrapping_sub(1)))
    {
        Some(d) => anyhow::anyhow!(
            "{}: document {}{}",
            d.source,
            d.index,
            &rest[digits.len()..]
        ),
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::documents::parse;

    const GOOD: &str =
        "apiVersion: meshwarden.dev/v1alpha1\nkind: TracePolicy\nmetadata: {name: a}\nspec: {}\n";

    #[test]
    fn local_errors_name_file_document_and_field() {
        let text = format!(
            "{GOOD}---\napiVersion: meshwarden.dev/v1alpha1\nkind: TracePolicy\nmetadata: {{name: checkout}}\nspec: {{samplingPercentage: 150}}\n"
        );
        let err = check(&parse("bad.yaml", &text).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad.yaml: document 2 (TracePolicy \"checkout\"): spec.samplingPercentage: must be a number from 0 to 100, got 150"
        );
    }

    #[test]
    fn duplicates_across_files_are_caught() {
        let mut docs = parse("one.yaml", GOOD).unwrap();
        docs.extend(parse("two.yaml", GOOD).unwrap());
        let err = check(&docs).unwrap_err().to_string();
        assert!(
            err.starts_with("two.yaml: document 1 (TracePolicy \"a\"): "),
            "{err}"
        );
        assert!(
            err.contains("already defined in one.yaml document 1"),
            "{err}"
        );
    }

    #[test]
    fn revisions_read_from_documents_are_sent_per_document() {
        let mut docs = parse("one.yaml", GOOD).unwrap();
        assert!(request(&docs, false, false).expected_revisions.is_empty());
        let based = GOOD.replace("{name: a}", "{name: b, revision: 7}");
        docs.extend(parse("two.yaml", &based).unwrap());
        let req = request(&docs, false, true);
        assert_eq!(req.expected_revisions, [0, 7]);
        assert!(req.force);
        assert!(!req.documents_json[1].contains("revision"), "stripped");
        check(&docs).unwrap();
        let err = parse(
            "bad.yaml",
            &GOOD.replace("{name: a}", "{name: a, revision: x}"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("bad.yaml: document 1: metadata.revision: must be a positive integer"),
            "{err}"
        );
    }

    #[test]
    fn apply_prints_what_changed_and_the_revision() {
        let result = |name: &str, outcome: pb::apply_result::Outcome, revision| pb::ApplyResult {
            kind: "TracePolicy".into(),
            name: name.into(),
            outcome: outcome.into(),
            version: "v".into(),
            revision,
        };
        use pb::apply_result::Outcome::*;
        let results = [
            result("a", Created, 1),
            result("b", Updated, 4),
            result("c", Unchanged, 2),
        ];
        assert_eq!(
            render(&results, false),
            "tracepolicy/a created (revision 1)\ntracepolicy/b configured (revision 4)\ntracepolicy/c unchanged (revision 2)\n"
        );
        assert_eq!(
            render(&results[..1], true),
            "tracepolicy/a created (dry run)\n"
        );
    }

    #[test]
    fn server_errors_are_mapped_back_to_files() {
        let mut docs = parse("one.yaml", GOOD).unwrap();
        docs.extend(parse("two.yaml", &GOOD.replace("name: a", "name: b")).unwrap());
        let err = locate(
            &docs,
            anyhow::anyhow!("document 2 (TracePolicy \"b\"): spec: bad"),
        );
        assert_eq!(
            err.to_string(),
            "two.yaml: document 1 (TracePolicy \"b\"): spec: bad"
        );
        let err = locate(&docs, anyhow::anyhow!("document 9: x"));
        assert_eq!(err.to_string(), "document 9: x");
    }

    #[test]
    fn sizes_over_the_server_limits_are_refused_naming_the_file() {
        let labels = |n: usize| -> String {
            (0..n)
                .map(|i| format!("    k{i}: {}\n", "v".repeat(1000)))
                .collect()
        };
        let big = |name: &str, n: usize| {
            format!(
                "apiVersion: meshwarden.dev/v1alpha1\nkind: TracePolicy\nmetadata:\n  name: {name}\n  labels:\n{}spec: {{}}\n",
                labels(n)
            )
        };
        let request = |docs: &[SourcedDocument]| request(docs, false, false);
        let mut docs = parse("a.yaml", &format!("{GOOD}---\n{}", big("big", 1100))).unwrap();
        let err = check_sizes(&docs, &request(&docs)).unwrap_err().to_string();
        assert!(
            err.starts_with("a.yaml: document 2 (TracePolicy \"big\"): 11")
                && err.ends_with(
                    " bytes as JSON, more than the limit of 1048576 bytes per policy document; make it smaller"
                ),
            "{err}"
        );
        docs = parse("a.yaml", &big("one", 1000)).unwrap();
        check_sizes(&docs, &request(&docs)).unwrap();
        docs.extend(parse("b.yaml", &big("two", 1000)).unwrap());
        docs.extend(parse("c.yaml", &big("three", 1000)).unwrap());
        let err = check_sizes(&docs, &request(&docs)).unwrap_err().to_string();
        assert!(
            err.starts_with("a.yaml, b.yaml, c.yaml: 3 documents make an apply request of ")
                && err.ends_with(
                    "bytes, more than the limit of 2097152 bytes per apply; apply fewer files at a time, or split large files"
                ),
            "{err}"
        );
    }
}
