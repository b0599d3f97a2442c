//! Config problems a technician can act on: file, key, line:column, message, hint.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file (or an environment override).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The file (or `environment variable NAME`) the problem is in.
    pub source: String,
    /// Dotted key path, e.g. `connection.port`.
    pub key: Option<String>,
    /// 1-based line and column, where TOML tells.
    pub line_col: Option<(usize, usize)>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some((l, c)) = self.line_col {
            write!(f, ":{l}:{c}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// All problems found while loading; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn single(p: Problem) -> Self {
        ConfigError { problems: vec![p] }
    }
}

/// A parsed TOML text kept around so problems can point at keys.
pub struct SourceText {
    pub path: PathBuf,
    pub text: String,
    doc: Option<toml_edit::ImDocument<String>>,
}

impl SourceText {
    pub fn new(path: &Path, text: String) -> Self {
        let doc = toml_edit::ImDocument::parse(text.clone()).ok();
        SourceText {
            path: path.to_path_buf(),
            text,
            doc,
        }
    }

    pub fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let upto = &self.text[..offset.min(self.text.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// Span of a dotted key (the key itself, or its nearest existing parent table).
    pub fn key_span(&self, dotted: &str) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut item: &toml_edit::Item = doc.as_item();
        let mut best = None;
        for part in dotted.split('.') {
            let found = match item {
                toml_edit::Item::Table(t) => t.get_key_value(part),
                toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => t.get_key_value(part),
                _ => None,
            };
            let Some((k, v)) = found else {
                return best;
            };
            best = k.span().or_else(|| v.span()).or(best);
            item = v;
        }
        best
    }

    /// The dotted key whose key or value covers a byte offset (deepest match).
    pub fn key_at(&self, offset: usize) -> Option<String> {
        fn walk(
            entries: Vec<(&toml_edit::Key, &toml_edit::Item)>,
            offset: usize,
            prefix: &str,
        ) -> Option<String> {
            for (k, v) in entries {
                let path = if prefix.is_empty() {
                    k.get().to_string()
                } else {
                    format!("{prefix}.{}", k.get())
                };
                let covers = |r: Option<Range<usize>>| r.is_some_and(|r| r.contains(&offset));
                let children: Vec<(&toml_edit::Key, &toml_edit::Item)> = match v {
                    toml_edit::Item::Table(t) => {
                        t.iter().filter_map(|(n, _)| t.get_key_value(n)).collect()
                    }
                    _ => Vec::new(),
                };
                if let Some(deeper) = walk(children, offset, &path) {
                    return Some(deeper);
                }
                if covers(k.span()) || covers(v.span()) {
                    return Some(path);
                }
            }
            None
        }
        let doc = self.doc.as_ref()?;
        let root = doc.as_table();
        walk(
            root.iter()
                .filter_map(|(n, _)| root.get_key_value(n))
                .collect(),
            offset,
            "",
        )
    }

    /// A problem at a key, located when the key is present in the text.
    pub fn problem_at_key(
        &self,
        key: &str,
        message: impl Into<String>,
        hint: Option<&str>,
    ) -> Problem {
        Problem {
            source: self.name(),
            key: Some(key.to_string()),
            line_col: self.key_span(key).map(|s| self.line_col(s.start)),
            message: message.into(),
            hint: hint.map(str::to_string),
        }
    }

    /// Turn a `toml` deserialisation error into a located problem.
    pub fn problem_from_toml(&self, e: &toml::de::Error) -> Problem {
        let span = e.span();
        let at = span.as_ref().and_then(|s| self.key_at(s.start));
        // "missing field `x`" points at the enclosing table; name the field.
        let missing = e
            .message()
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string);
        let key = match (at, missing) {
            (Some(t), Some(f)) => Some(format!("{t}.{f}")),
            (None, Some(f)) => Some(f),
            (at, None) => at,
        };
        let message = e.message().trim().to_string();
        let hint = if message.starts_with("unknown field") {
            Some("remove it or fix its spelling; see the commented defaults in config/neuroedge.toml and devices/*.toml".to_string())
        } else if message.starts_with("invalid type") {
            Some(
                "check the value's type (quotes for strings, no quotes for numbers and booleans)"
                    .to_string(),
            )
        } else if message.starts_with("missing field") {
            Some("add this key; it has no default".to_string())
        } else {
            None
        };
        Problem {
            source: self.name(),
            key,
            line_col: span.map(|s| self.line_col(s.start)),
            message,
            hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_keys_and_offsets() {
        let src = SourceText::new(
            Path::new("x.toml"),
            "id = \"a\"\n[connection]\nport = \"/dev/ttyUSB0\"\nbaud = 9600\n".into(),
        );
        let span = src.key_span("connection.baud").unwrap();
        assert_eq!(src.line_col(span.start), (4, 1));
        assert_eq!(
            src.key_at(span.start + 8).as_deref(),
            Some("connection.baud")
        );
        assert_eq!(src.key_at(1).as_deref(), Some("id"));
        // A missing key falls back to its parent table.
        let parent = src.key_span("connection.missing").unwrap();
        assert_eq!(src.line_col(parent.start).0, 2);
    }
}
