//! Reading the workflows directory: one workflow per `*.toml` file, names unique.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Schedule, WorkflowSpec};
use crate::diagnostic::Diagnostic;
use crate::path;
use crate::source::SourceFile;

/// A parsed workflow file.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub spec: WorkflowSpec,
    pub source: SourceFile,
    /// Present when the file has a valid `schedule`.
    pub schedule: Option<Schedule>,
}

impl Workflow {
    /// Parses one file. Only parse errors are returned here; [`super::check`] finds the rest.
    pub fn read(path: &Path) -> Result<Self, Diagnostic> {
        let source = SourceFile::read(path)?;
        let spec: WorkflowSpec = source.parse()?;
        let name = spec.name.clone().unwrap_or_else(|| stem(path));
        let schedule = spec.schedule.as_deref().and_then(|expr| Schedule::parse(expr, spec.timezone.as_deref()).ok());
        Ok(Self { name, spec, source, schedule })
    }
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The `*.toml` files of a workflows directory, sorted.
pub fn workflow_files(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Diagnostic::new(dir, format!("cannot read workflows directory: {e} (set paths.workflows)")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every workflow file of `dir`. Files that do not parse, and duplicate names, come
/// back as diagnostics; the workflows that parsed are returned for further checks.
pub fn read_all(dir: &Path) -> (Vec<Workflow>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let files = match workflow_files(dir) {
        Ok(f) => f,
        Err(d) => return (Vec::new(), vec![d]),
    };
    let mut workflows: Vec<Workflow> = Vec::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        match Workflow::read(&file) {
            Ok(w) => {
                if let Some(first) = names.get(&w.name) {
                    let at = if w.spec.name.is_some() { path!["name"] } else { crate::source::KeyPath::root() };
                    diagnostics.push(w.source.error_at(
                        &at,
                        format!("duplicate workflow name {:?}: {} already defines it", w.name, first.display()),
                    ));
                    continue;
                }
                names.insert(w.name.clone(), file.clone());
                workflows.push(w);
            }
            Err(d) => diagnostics.push(d),
        }
    }
    (workflows, diagnostics)
}

/// Finds a workflow by name (or by file name) in `dir`.
pub fn find(dir: &Path, name: &str) -> Result<Workflow, Diagnostic> {
    let (workflows, diagnostics) = read_all(dir);
    if let Some(w) = workflows.into_iter().find(|w| w.name == name) {
        return Ok(w);
    }
    let direct = dir.join(format!("{name}.toml"));
    if let Some(d) = diagnostics.into_iter().find(|d| d.file == direct) {
        return Err(d);
    }
    Err(Diagnostic::new(dir, format!("no workflow named {name:?} in this directory (see `tenantry validate`)")))
}
