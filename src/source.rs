//! TOML source files with positions: deserialise with `FILE:LINE:COL` errors, and turn a key path into a position for checks made after parsing.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::Diagnostic;

/// One step of a path into a TOML document: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into a TOML document, e.g. `steps[2].kind`. Built by the checks that run after
/// parsing, so their findings can be reported at the line the operator has to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.into()));
        Self(segs)
    }

    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    pub fn segs(&self) -> &[Seg] {
        &self.0
    }
}

/// `KeyPath::root().key("a").index(1).key("b")` in one call: `path!["a", 1, "b"]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut p = $crate::source::KeyPath::root();
        $( p = $crate::source::PathSeg::push_onto($seg, p); )*
        p
    }};
}

/// What `path!` accepts as a segment.
pub trait PathSeg {
    fn push_onto(self, path: KeyPath) -> KeyPath;
}
impl PathSeg for &str {
    fn push_onto(self, path: KeyPath) -> KeyPath {
        path.key(self)
    }
}
impl PathSeg for &String {
    fn push_onto(self, path: KeyPath) -> KeyPath {
        path.key(self.as_str())
    }
}
impl PathSeg for String {
    fn push_onto(self, path: KeyPath) -> KeyPath {
        path.key(self)
    }
}
impl PathSeg for usize {
    fn push_onto(self, path: KeyPath) -> KeyPath {
        path.index(self)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The text of one TOML file, kept so that problems found after parsing can be located.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn read(path: &Path) -> Result<Self, Diagnostic> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self { path: path.to_path_buf(), text }),
            Err(e) => Err(Diagnostic::new(path, format!("cannot read file: {e}"))),
        }
    }

    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self { path: path.into(), text: text.into() }
    }

    /// Deserialises the whole file; syntax errors, unknown keys and wrong types come back
    /// with the position toml reports (the offending key or value).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Diagnostic> {
        toml::from_str(&self.text).map_err(|e| self.toml_error(&e))
    }

    /// A toml error as a diagnostic at its span (the whole file when toml gives none).
    pub fn toml_error(&self, e: &toml::de::Error) -> Diagnostic {
        let message = first_line_lowercase(e.message());
        match e.span() {
            Some(span) => Diagnostic::at_offset(&self.path, &self.text, span.start, message),
            None => Diagnostic::at(&self.path, 1, 1, message),
        }
    }

    /// A diagnostic at the value of `path` (or the nearest enclosing key that exists, so a
    /// missing key is reported at its table).
    pub fn error_at(&self, path: &KeyPath, message: impl Into<String>) -> Diagnostic {
        let offset = self.offset_of(path).unwrap_or(0);
        Diagnostic::at_offset(&self.path, &self.text, offset, message)
    }

    /// The keys present in the table at `path`, in file order (empty when it is not a table).
    pub fn keys_at(&self, path: &KeyPath) -> Vec<String> {
        let Ok(root) = DeTable::parse(&self.text) else {
            return Vec::new();
        };
        let root = DeValue::Table(root.into_inner());
        let mut value: &DeValue<'_> = &root;
        for seg in path.segs() {
            let next = match (seg, value) {
                (Seg::Key(k), DeValue::Table(t)) => t.get(k.as_str()),
                (Seg::Index(i), DeValue::Array(a)) => a.get(*i),
                _ => None,
            };
            match next {
                Some(v) => value = v.get_ref(),
                None => return Vec::new(),
            }
        }
        let mut keys: Vec<(usize, String)> = match value {
            DeValue::Table(t) => t.iter().map(|(k, _)| (k.span().start, k.get_ref().to_string())).collect(),
            _ => Vec::new(),
        };
        keys.sort();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    /// Byte offset of the value at `path`, falling back to the deepest existing ancestor.
    pub fn offset_of(&self, path: &KeyPath) -> Option<usize> {
        let root = DeTable::parse(&self.text).ok()?;
        let mut best = None;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut array: Option<&toml::de::DeArray<'_>> = None;
        for seg in path.segs() {
            let found = match (seg, table, array) {
                (Seg::Key(k), Some(t), _) => t.get(k.as_str()),
                (Seg::Index(i), _, Some(a)) => a.get(*i),
                _ => None,
            };
            let Some(value) = found else { break };
            best = Some(value.span().start);
            table = None;
            array = None;
            match value.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        best
    }
}

/// toml error messages are sentences with a capital and sometimes a multi-line excerpt; we
/// print our own position, so keep the first line in the house style.
fn first_line_lowercase(message: &str) -> String {
    let line = message.lines().next().unwrap_or("").trim();
    let mut chars = line.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => "invalid TOML".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        id: String,
    }

    #[test]
    fn unknown_key_is_reported_at_the_key() {
        let src = SourceFile::from_text("w.toml", "name = \"x\"\n\n[[items]]\nid = \"a\"\nidd = \"b\"\n");
        let d = src.parse::<Doc>().unwrap_err();
        assert_eq!((d.line, d.col), (Some(5), Some(1)), "{d}");
        assert!(d.message.contains("unknown field `idd`"), "{d}");
    }

    #[test]
    fn syntax_error_has_a_position() {
        let src = SourceFile::from_text("w.toml", "name = \"x\"\nitems = [\n");
        let d = src.parse::<Doc>().unwrap_err();
        assert_eq!((d.line, d.col), (Some(2), Some(10)), "{d}");
        assert!(d.message.contains("unclosed array"), "{d}");
    }

    #[test]
    fn key_paths_locate_values_and_fall_back_to_ancestors() {
        let text = "name = \"x\"\n[[items]]\nid = \"a\"\n[[items]]\nid = \"b\"\n";
        let src = SourceFile::from_text("w.toml", text);
        let d = src.error_at(&path!["items", 1, "id"], "bad id");
        assert_eq!((d.line, d.col), (Some(5), Some(6)));
        let d = src.error_at(&path!["items", 1, "missing"], "no such key");
        assert_eq!(d.line, Some(4));
        assert_eq!(path!["items", 1, "id"].to_string(), "items[1].id");
    }
}
