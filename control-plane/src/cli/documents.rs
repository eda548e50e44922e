//! Reading policy documents for `apply -f`: files, directories or stdin holding YAML
//! (several documents separated by `---`) or JSON (one object, or an array of them).
//!
//! Hostile input is refused early and cheaply, each time naming the source and the limit:
//! a file larger than [`MAX_INPUT_FILE_BYTES`] is not read at all (stdin is read up to the
//! limit); nesting deeper than [`MAX_YAML_DEPTH`] is found by a linear pre-scan before the
//! YAML parser (whose cost grows with the square of the flow nesting depth) sees it; YAML
//! aliases may not expand a file's documents beyond [`expansion_budget`]; and `.nan` /
//! `.inf` are refused as not finite, naming the field.

use anyhow::{bail, Context};
use meshwarden_common::limits::{MAX_DOCUMENT_BYTES, MAX_INPUT_FILE_BYTES, MAX_YAML_DEPTH};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::cell::Cell;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One document and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedDocument {
    /// File name as given (or `stdin`).
    pub source: String,
    /// 1-based position among the documents of that source.
    pub index: usize,
    /// The document without `metadata.revision`.
    pub value: Value,
    /// `metadata.revision`, as `get -o yaml|json` prints it: the revision the document was
    /// based on, which `apply` sends so a concurrent change is not silently overwritten.
    pub revision: Option<u64>,
}

/// Takes `metadata.revision` out of `value`; it must be a positive integer.
fn take_revision(source: &str, index: usize, value: &mut Value) -> anyhow::Result<Option<u64>> {
    let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    let Some(revision) = metadata.remove("revision") else {
        return Ok(None);
    };
    match revision.as_u64() {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => bail!(
            "{source}: document {index}: metadata.revision: must be a positive integer (the revision `meshwarden get` printed), got {revision}"
        ),
    }
}

/// Reads every document of every path, in order. A directory contributes its `*.yaml`,
/// `*.yml` and `*.json` files (not recursively) in name order; `-` is stdin.
pub fn read_all(paths: &[PathBuf]) -> anyhow::Result<Vec<SourcedDocument>> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let text = read_capped(std::io::stdin().lock(), "stdin", None)?;
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
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {source}"))?;
    // Refuse by size before reading anything; the capped read below also covers files
    // whose size the metadata does not tell (pipes, /proc).
    let size = file
        .metadata()
        .with_context(|| format!("cannot read {source}"))?
        .len();
    if size > MAX_INPUT_FILE_BYTES {
        bail!(too_large(&source, Some(size)));
    }
    let text = read_capped(file, &source, Some(size))?;
    parse(&source, &text)
}

/// Reads at most [`MAX_INPUT_FILE_BYTES`] as UTF-8 text.
fn read_capped(reader: impl Read, source: &str, size_hint: Option<u64>) -> anyhow::Result<String> {
    let mut bytes = Vec::with_capacity(size_hint.unwrap_or(0).min(MAX_INPUT_FILE_BYTES) as usize);
    reader
        .take(MAX_INPUT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {source}"))?;
    if bytes.len() as u64 > MAX_INPUT_FILE_BYTES {
        bail!(too_large(source, None));
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{source}: not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn too_large(source: &str, size: Option<u64>) -> String {
    let size = match size {
        Some(n) => format!("{n} bytes, more"),
        None => "more".to_string(),
    };
    format!(
        "{source}: {size} than the limit of {MAX_INPUT_FILE_BYTES} bytes per input file; split it into smaller files (policy documents are at most {MAX_DOCUMENT_BYTES} bytes each) and apply them one at a time"
    )
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
    if let Some(line) = too_deep(text, MAX_YAML_DEPTH) {
        bail!(
            "{source}: line {line}: nested deeper than {MAX_YAML_DEPTH} levels, the limit (policies need fewer than 10)"
        );
    }
    let budget = Cell::new(expansion_budget(text));
    let mut values = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = JsonSeed { budget: &budget }
            .deserialize(doc)
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
    values
        .into_iter()
        .enumerate()
        .map(|(i, mut value)| {
            let revision = take_revision(source, i + 1, &mut value)?;
            Ok(SourcedDocument {
                source: source.to_string(),
                index: i + 1,
                value,
                revision,
            })
        })
        .collect()
}

/// What the documents of a file may expand to, in values plus bytes of strings and keys:
/// twice the file's size (and at least 64 KiB). Without aliases a file never comes near it
/// (every value and byte of text needs at least a byte of input); an alias repeats what its
/// anchor holds, so a few lines of anchors and aliases ("billion laughs") could otherwise
/// expand to gigabytes.
pub fn expansion_budget(text: &str) -> usize {
    (2 * text.len()).max(64 * 1024)
}

/// Deserializes one YAML value into JSON, refusing non-finite numbers and charging every
/// value and string byte to `budget`. (serde_yaml prefixes errors with the path of the
/// value, `spec.delay.percentage.value: ...`, as validation names fields.)
#[derive(Clone, Copy)]
struct JsonSeed<'a> {
    budget: &'a Cell<usize>,
}

impl JsonSeed<'_> {
    fn charge<E: serde::de::Error>(&self, units: usize) -> Result<(), E> {
        match self.budget.get().checked_sub(units.saturating_add(1)) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(E::custom(
                "the documents expand to more than twice the size of the file (YAML aliases repeating large anchors?); write them out without `*alias` references",
            )),
        }
    }
}

impl<'de> DeserializeSeed<'de> for JsonSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for JsonSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.charge(0)?;
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("must be a finite number, got {v}")))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.charge(key.len())?;
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// The 1-based line on which `text`'s collections nest deeper than `limit`, if they do.
///
/// A linear, conservative pre-scan (it may count a level or two too many or too few on odd
/// input, never an order of magnitude): flow collections (`[`, `{`) are counted outside
/// quoted scalars, comments and block scalars (`|`, `>`); block collections by the stack of
/// increasing indentations, with each compact `- ` / `? ` entry on a line one level more.
fn too_deep(text: &str, limit: usize) -> Option<usize> {
    // Every byte that matters is ASCII, and in UTF-8 no byte of a multi-byte character is,
    // so the scan works on bytes.
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    let mut quote: Option<u8> = None;
    // Inside a block scalar: the column its content must be indented beyond.
    let mut block_scalar: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|&&b| b == b' ').count();
        let content = line[indent..].trim_end();
        if let Some(parent) = block_scalar {
            if content.is_empty() || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut i = 0;
        if quote.is_none() && flow == 0 {
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let marker = (line.starts_with("---") || line.starts_with("..."))
                && matches!(bytes.get(3), None | Some(b' ' | b'\t'));
            if marker {
                // A document marker: a new document starts from nothing.
                indents.clear();
                i = 3;
            } else {
                while indents.last().is_some_and(|&top| top >= indent) {
                    indents.pop();
                }
                indents.push(indent);
                // Compact nested entries: `- - - x`, `- ? x`, each a level.
                let mut col = indent;
                while matches!(bytes.get(col), Some(b'-' | b'?'))
                    && matches!(bytes.get(col + 1), Some(b' ' | b'\t'))
                {
                    col += 2;
                    while matches!(bytes.get(col), Some(b' ' | b'\t')) {
                        col += 1;
                    }
                    indents.push(col);
                }
                if indents.len() > limit {
                    return Some(n + 1);
                }
                i = indent;
            }
        }
        let mut prev: Option<u8> = None;
        while i < bytes.len() {
            let c = bytes[i];
            match quote {
                Some(b'\'') => {
                    if c == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            quote = None;
                        }
                    }
                }
                Some(_) => {
                    if c == b'\\' {
                        i += 1;
                    } else if c == b'"' {
                        quote = None;
                    }
                }
                None => {
                    let after_space = matches!(prev, None | Some(b' ' | b'\t'));
                    // Where a node (a quoted scalar, a flow collection) may start: after
                    // whitespace, or inside a flow collection after an indicator.
                    let node_start = after_space
                        || (flow > 0 && matches!(prev, Some(b'[' | b'{' | b',' | b':')));
                    match c {
                        b'#' if after_space => break,
                        b'\'' | b'"' if node_start => quote = Some(c),
                        b'[' | b'{' if node_start => {
                            flow += 1;
                            if flow + indents.len() > limit {
                                return Some(n + 1);
                            }
                        }
                        b']' | b'}' if flow > 0 => flow -= 1,
                        b'|' | b'>' if flow == 0 && after_space => {
                            let rest = line[i + 1..]
                                .trim_start_matches(|c: char| {
                                    c.is_ascii_digit() || c == '+' || c == '-'
                                })
                                .trim_start();
                            if rest.is_empty() || rest.starts_with('#') {
                                // Its lines are indented beyond the node that holds it.
                                block_scalar = Some(indents.last().copied().unwrap_or(indent));
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            prev = Some(c);
            i += 1;
        }
    }
    None
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

    #[test]
    fn files_over_the_size_limit_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.yaml");
        let file = std::fs::File::create(&path).unwrap();
        // Sparse: 100 MB on paper, nothing on disk, and nothing is read.
        file.set_len(100 << 20).unwrap();
        let err = read_all(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}: 104857600 bytes, more than the limit of 4194304 bytes per input file; split it into smaller files (policy documents are at most 1048576 bytes each) and apply them one at a time",
                path.display()
            )
        );
        // Streams are read up to the limit only.
        let endless = std::io::repeat(b'a');
        let err = read_capped(endless, "stdin", None).unwrap_err().to_string();
        assert!(
            err.starts_with("stdin: more than the limit of 4194304 bytes per input file; split it"),
            "{err}"
        );
        let err = read_capped(&b"a: \xff"[..], "x.yaml", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.yaml: not UTF-8 text (invalid byte at offset 3)"
        );
    }

    #[test]
    fn deep_nesting_is_refused_fast() {
        let started = std::time::Instant::now();
        let flow = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = parse("deep.yaml", &flow).unwrap_err().to_string();
        assert_eq!(
            err,
            "deep.yaml: line 1: nested deeper than 64 levels, the limit (policies need fewer than 10)"
        );
        let mapping = format!("{}a: 1", "{a: ".repeat(100));
        assert!(parse("deep.yaml", &mapping).is_err());
        let compact = format!("{}x\n", "- ".repeat(100_000));
        let err = parse("deep.yaml", &compact).unwrap_err().to_string();
        assert!(err.starts_with("deep.yaml: line 1: nested deeper"), "{err}");
        let block: String = (0..100).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        let err = parse("deep.yaml", &block).unwrap_err().to_string();
        assert!(
            err.starts_with("deep.yaml: line 65: nested deeper"),
            "{err}"
        );
        // Not hidden by a block scalar indicator the nesting is not indented beyond.
        let hidden = format!("- a: |\n {}\n", "[".repeat(100_000));
        let err = parse("deep.yaml", &hidden).unwrap_err().to_string();
        assert!(err.starts_with("deep.yaml: line 2: nested deeper"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        // Brackets that are text are not nesting.
        let quoted = format!(
            "a: \"{0}\"\nb: '{0}'\nc: x{0}\nd: |\n  {0}\n  {0}\ne: 1 # {0}\n",
            "[".repeat(100)
        );
        let docs = parse("ok.yaml", &quoted).unwrap();
        assert_eq!(docs[0].value["a"], json!("[".repeat(100)));
        assert_eq!(docs[0].value["e"], json!(1));
        // Up to the limit is fine.
        let nested = format!("{}{}", "[".repeat(60), "]".repeat(60));
        parse("ok.yaml", &nested).unwrap();
    }

    #[test]
    fn the_examples_pass_the_pre_scan() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let docs = read_all(&[examples]).unwrap();
        assert!(docs.len() >= 4, "{}", docs.len());
    }

    #[test]
    fn alias_bombs_are_refused_fast() {
        let started = std::time::Instant::now();
        let mut bomb = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for level in b'b'..=b'i' {
            let prev = (level - 1) as char;
            let refs = vec![format!("*{prev}"); 9].join(",");
            bomb.push_str(&format!("{}: &{} [{refs}]\n", level as char, level as char));
        }
        let err = parse("bomb.yaml", &bomb).unwrap_err().to_string();
        assert!(
            err.starts_with("bomb.yaml: YAML document 1: ")
                && err.contains("expand to more than twice the size of the file"),
            "{err}"
        );
        // One big anchor repeated: few values, many bytes.
        let big = format!(
            "a: &a \"{}\"\nb: [{}]\n",
            "x".repeat(100_000),
            vec!["*a"; 1000].join(",")
        );
        let err = parse("big.yaml", &big).unwrap_err().to_string();
        assert!(err.contains("expand to more than twice"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Modest use of anchors is fine.
        let ok = "m: &m {path: {prefix: /api}}\nx: *m\ny: *m\n";
        assert_eq!(
            parse("ok.yaml", ok).unwrap()[0].value["y"]["path"]["prefix"],
            "/api"
        );
    }

    #[test]
    fn non_finite_numbers_name_the_field() {
        let text = "kind: FaultPolicy\nspec:\n  delay:\n    percentage: {value: .nan}\n";
        let err = parse("f.yaml", text).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "f.yaml: YAML document 1: spec.delay.percentage.value: must be a finite number, got NaN"
            ),
            "{err}"
        );
        let err = parse("f.yaml", "spec:\n  list: [1, -.inf]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.list[1]: must be a finite number, got -inf"),
            "{err}"
        );
        let docs = parse("f.yaml", "a: 1.5\nb: -0.0\nc: 7\nd: ~\n").unwrap();
        assert_eq!(
            docs[0].value,
            json!({"a": 1.5, "b": -0.0, "c": 7, "d": null})
        );
    }
}
