//! The layered loader: defaults, the TOML file, `TENANTRY__` environment variables, `--set` flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, DEFAULT_FILE, ENV_PREFIX};
use crate::diagnostic::Diagnostic;
use crate::source::{KeyPath, SourceFile};

/// One value set from outside the file: an environment variable or a `--set` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOverride {
    /// What to show the operator: `TENANTRY__REDIS__URL` or `--set redis.url`.
    pub origin: String,
    pub path: Vec<String>,
    pub value: String,
}

impl EnvOverride {
    pub fn key_path(&self) -> KeyPath {
        self.path.iter().fold(KeyPath::root(), |p, k| p.key(k.as_str()))
    }
}

/// The layers above the file, in order of precedence (later wins).
#[derive(Debug, Clone, Default)]
pub struct Overrides(pub Vec<EnvOverride>);

impl Overrides {
    /// `TENANTRY__SECTION__KEY=value` variables; segments are lower-cased.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut list: Vec<EnvOverride> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
                (!path.iter().any(String::is_empty)).then_some(EnvOverride { origin: name, path, value })
            })
            .collect();
        // Deterministic order whatever the environment's order is.
        list.sort_by(|a, b| a.origin.cmp(&b.origin));
        Self(list)
    }

    /// `--set section.key=value` flags.
    pub fn push_set(&mut self, set: &str) -> Result<(), String> {
        let (key, value) = set.split_once('=').ok_or_else(|| format!("--set {set:?}: expected KEY=VALUE"))?;
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("--set {set:?}: empty key segment"));
        }
        self.0.push(EnvOverride { origin: format!("--set {key}"), path, value: value.to_string() });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A loaded configuration with what is needed to report problems at their source.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: SourceFile,
    /// Directory of the config file; relative paths inside it are relative to this.
    pub base_dir: PathBuf,
    pub overrides: Overrides,
}

impl LoadedConfig {
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() { path.to_path_buf() } else { normalize(&self.base_dir.join(path)) }
    }

    pub fn workflows_dir(&self) -> PathBuf {
        self.resolve_path(&self.config.paths.workflows)
    }

    /// A diagnostic for the value at `path`: at its line in the file, or naming the
    /// environment variable / flag that set it.
    pub fn error_at(&self, path: &KeyPath, message: impl Into<String>) -> Diagnostic {
        let message = message.into();
        if let Some(o) = self.overrides.0.iter().rev().find(|o| path.segs().starts_with(o.key_path().segs())) {
            return Diagnostic::new(&self.source.path, format!("{message} (set by {})", o.origin));
        }
        self.source.error_at(path, message)
    }
}

/// Removes `.` and `name/..` pairs without touching the file system, so that paths in
/// messages read `workflows/x.toml` rather than `deploy/../workflows/x.toml`.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() { PathBuf::from(".") } else { out.iter().collect() }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no configuration file: {0} does not exist (pass --config FILE, or create tenantry.toml; deploy/reference.toml documents every key)"
    )]
    NotFound(PathBuf),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

/// Loads the file (or `./tenantry.toml`) and applies the overrides. The result is parsed but
/// not yet [`check`](super::check)ed.
pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<LoadedConfig, ConfigError> {
    let path = file.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_FILE));
    if !path.exists() {
        return Err(ConfigError::NotFound(path));
    }
    let source = SourceFile::read(&path).map_err(|d| ConfigError::Invalid(vec![d]))?;
    let config = if overrides.is_empty() {
        source.parse::<Config>().map_err(|d| ConfigError::Invalid(vec![d]))?
    } else {
        parse_with_overrides(&source, &overrides)?
    };
    let base_dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    Ok(LoadedConfig { config, source, base_dir, overrides })
}

fn parse_with_overrides(source: &SourceFile, overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut table: toml::Table =
        toml::from_str(&source.text).map_err(|e| ConfigError::Invalid(vec![source.toml_error(&e)]))?;
    for o in &overrides.0 {
        set_path(&mut table, &o.path, parse_override_value(&o.value))
            .map_err(|e| ConfigError::Invalid(vec![Diagnostic::new(&source.path, format!("{}: {e}", o.origin))]))?;
    }
    Config::deserialize(toml::Value::Table(table)).map_err(|e| {
        // Prefer the file's own position when the file alone shows the same problem.
        let diagnostic = match source.parse::<Config>() {
            Err(d) if d.message == first_line(&e.to_string()) => d,
            _ => {
                let origins: Vec<&str> = overrides.0.iter().map(|o| o.origin.as_str()).collect();
                Diagnostic::new(
                    &source.path,
                    format!("{} (with overrides {})", first_line(&e.to_string()), origins.join(", ")),
                )
            }
        };
        ConfigError::Invalid(vec![diagnostic])
    })
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    let mut chars = line.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

/// Values are read as TOML when they parse as a TOML value (`8`, `true`, `["a"]`), else
/// as plain strings, so `TENANTRY__REDIS__URL=redis://...` needs no quoting.
fn parse_override_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for key in parents {
        let entry = current.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| format!("`{key}` is not a table"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_are_lowercased_paths() {
        let o = Overrides::from_env([
            ("TENANTRY__REDIS__URL".to_string(), "redis://x".to_string()),
            ("HOME".to_string(), "/root".to_string()),
            ("TENANTRY__BAD____X".to_string(), "1".to_string()),
        ]);
        assert_eq!(o.0.len(), 1);
        assert_eq!(o.0[0].path, vec!["redis", "url"]);
    }

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(normalize(Path::new("deploy/local/../../workflows/x.toml")), PathBuf::from("workflows/x.toml"));
        assert_eq!(normalize(Path::new("./a/./b")), PathBuf::from("a/b"));
        assert_eq!(normalize(Path::new("../a")), PathBuf::from("../a"));
        assert_eq!(normalize(Path::new("a/..")), PathBuf::from("."));
    }

    #[test]
    fn override_values_are_typed_when_they_parse() {
        assert_eq!(parse_override_value("8"), toml::Value::Integer(8));
        assert_eq!(parse_override_value("redis://h:1"), toml::Value::String("redis://h:1".into()));
        assert_eq!(parse_override_value("\"q\""), toml::Value::String("q".into()));
    }
}
