//! Reading policy documents for `apply -f`: files, directories or stdin holding YAML
//! (several documents separated by `---`) or JSON (one object, or an array of them).

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One document and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedDocument {
    /// File name as given (or `stdin`).
    pub source: String,
    /// 1-based position among the documents of that source.
    pub index: usize,
    pub value: Value,
}

/// Reads every document of every path, in order. A directory contributes its `*.yaml`,
/// `*.yml` and `*.json` files (not recursively) in name order; `-` is stdin.
pub fn read_all(paths: &[PathBuf]) -> anyhow::Result<Vec<SourcedDocument>> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read stdin")?;
            out.extend(parse("stdin", &text)?);
        } else if path.is_dir() {
            for file in policy_files(path)? {
                out.extend(read_file(&file)?);
            }
        } else {
            out.extend(read_file(path)?);
        }
    }
    Ok(out)
}

fn read_file(path: &Path) -> anyhow::Result<Vec<SourcedDocument>> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {source}"))?;
    parse(&source, &text)
}

fn policy_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read directory {}", dir.display()))?
            .path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        if path.is_file() && matches!(ext, "yaml" | "yml" | "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses the documents of one source. Empty YAML documents (comments only, a trailing
/// `---`) are skipped; a top-level array contributes each element.
pub fn parse(source: &str, text: &str) -> anyhow::Result<Vec<SourcedDocument>> {
    let mut values = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc)
            .map_err(|e| anyhow::anyhow!("{source}: YAML document {}: {e}", i + 1))?;
        match value {
            Value::Null => {}
            Value::Array(items) => values.extend(items),
            v => values.push(v),
        }
    }
    if values.is_empty() {
        bail!("{source}: no policy documents found");
    }
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| SourcedDocument {
            source: source.to_string(),
            index: i + 1,
            value,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_multi_document_files_split_on_separators() {
        let text = "# leading comment\n---\napiVersion: v\nkind: TracePolicy\nmetadata: {name: a}\nspec:\n  samplingPercentage: 50\n---\n# only a comment\n---\nkind: FaultPolicy\nmetadata:\n  name: b\n---\n";
        let docs = parse("p.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].index, 1);
        assert_eq!(docs[0].value["spec"]["samplingPercentage"], json!(50));
        assert_eq!(docs[1].index, 2);
        assert_eq!(docs[1].value["metadata"]["name"], json!("b"));
        assert_eq!(docs[1].source, "p.yaml");
    }

    #[test]
    fn json_objects_and_arrays_are_accepted() {
        let one = parse(
            "p.json",
            r#"{"kind": "TracePolicy", "spec": {"formats": ["w3c"]}}"#,
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].value["spec"]["formats"], json!(["w3c"]));
        let many = parse("p.json", r#"[{"kind": "A"}, {"kind": "B"}]"#).unwrap();
        assert_eq!(many.iter().map(|d| d.index).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn syntax_errors_and_empty_input_name_the_source() {
        let err = parse("bad.yaml", "a: 1\n---\nb: [unclosed\n").unwrap_err();
        assert!(
            err.to_string().starts_with("bad.yaml: YAML document 2: "),
            "{err}"
        );
        let err = parse("empty.yaml", "# nothing\n").unwrap_err();
        assert_eq!(err.to_string(), "empty.yaml: no policy documents found");
    }

    #[test]
    fn directories_contribute_policy_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yaml"), "kind: B\n").unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"kind": "A"}"#).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let docs = read_all(&[dir.path().to_path_buf()]).unwrap();
        let kinds: Vec<_> = docs.iter().map(|d| d.value["kind"].clone()).collect();
        assert_eq!(kinds, [json!("A"), json!("B")]);
    }
}
