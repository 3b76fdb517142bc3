//! Reading items files: one JSON object per line, `{"id": "...", "text": "...",
//! "sensitivity"?: "local_only", "metadata"?: {...}}` (`item_id` is accepted for `id`; any
//! other field is kept as metadata). Errors name the file and line.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context as _, bail};
use switchyard_proto::Item;

/// The items of a file, checked: valid JSON objects, an id and a text each, no duplicate ids.
///
/// # Errors
/// The first bad line, with file name and line number; an empty file.
pub fn read_items(path: &Path) -> anyhow::Result<Vec<Item>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.with_context(|| {
            format!(
                "{}:{line_no}: cannot read line (not UTF-8?)",
                path.display()
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let item =
            parse_line(&line).map_err(|e| anyhow::anyhow!("{}:{line_no}: {e}", path.display()))?;
        if !seen.insert(item.item_id.clone()) {
            bail!(
                "{}:{line_no}: duplicate id {:?}",
                path.display(),
                item.item_id
            );
        }
        items.push(item);
    }
    if items.is_empty() {
        bail!("`{}` has no items", path.display());
    }
    Ok(items)
}

/// Parses one line into an item; unknown fields go to metadata.
///
/// # Errors
/// A message saying what is wrong with the line.
pub fn parse_line(line: &str) -> Result<Item, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let serde_json::Value::Object(mut obj) = value else {
        return Err("not a JSON object".to_owned());
    };
    let id = match obj.remove("id").or_else(|| obj.remove("item_id")) {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(_) => return Err("`id` must be a string or a number".to_owned()),
        None => return Err("missing `id`".to_owned()),
    };
    let text = match obj.remove("text") {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err("`text` must be a string".to_owned()),
        None => return Err("missing `text`".to_owned()),
    };
    let sensitivity = match obj.remove("sensitivity") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(_) => return Err("`sensitivity` must be a string".to_owned()),
    };
    let mut metadata: BTreeMap<String, serde_json::Value> = match obj.remove("metadata") {
        None | Some(serde_json::Value::Null) => BTreeMap::new(),
        Some(serde_json::Value::Object(m)) => m.into_iter().collect(),
        Some(_) => return Err("`metadata` must be an object".to_owned()),
    };
    metadata.extend(obj);
    Ok(Item {
        item_id: id,
        text,
        sensitivity,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_parse_and_extra_fields_become_metadata() {
        let it =
            parse_line(r#"{"id": 7, "text": "hi", "lang": "en", "sensitivity": "local_only"}"#)
                .unwrap();
        assert_eq!(it.item_id, "7");
        assert_eq!(it.sensitivity.as_deref(), Some("local_only"));
        assert_eq!(it.metadata["lang"], "en");
    }

    #[test]
    fn errors_name_file_and_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{{\"id\":\"a\",\"text\":\"x\"}}\nnot json").unwrap();
        let err = read_items(f.path()).unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("not JSON"), "{err}");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "{{\"id\":\"a\",\"text\":\"x\"}}\n{{\"id\":\"a\",\"text\":\"y\"}}"
        )
        .unwrap();
        assert!(
            read_items(f.path())
                .unwrap_err()
                .to_string()
                .contains("duplicate id")
        );
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(
            read_items(f.path())
                .unwrap_err()
                .to_string()
                .contains("no items")
        );
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{{\"text\":\"x\"}}").unwrap();
        assert!(
            read_items(f.path())
                .unwrap_err()
                .to_string()
                .contains("missing `id`")
        );
    }
}
