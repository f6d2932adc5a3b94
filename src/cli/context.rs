//! What every command needs: the loaded configuration, the catalog, and failures mapped to exit statuses.

use std::path::Path;

use crate::catalog::{self, Catalog, CatalogError, CatalogSource, TenantOrigin, TenantProblem};
use crate::config::{self, ConfigError, LoadedConfig, Overrides};
use crate::diagnostic::Diagnostic;
use crate::path;

/// Why a command did not succeed, and so which exit status it gets.
#[derive(Debug)]
pub enum Failure {
    /// Problems in the operator's files: exit 1.
    Invalid(Vec<Diagnostic>),
    /// Something failed (a run, a check): exit 1.
    Failed(String),
    /// A required service (Redis, a database, the object store) is unreachable: exit 3.
    Unreachable(String),
    /// What the command names does not exist (a run, a workflow): exit 1.
    NotFound(String),
    /// Silent exit 1: the command already printed what went wrong.
    Reported,
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Self::Unreachable(_) => 3,
            Self::Invalid(_) | Self::Failed(_) | Self::NotFound(_) | Self::Reported => 1,
        }
    }

    /// Prints the failure on stderr (diagnostics one per line, as editors and CI expect).
    pub fn report(&self) {
        match self {
            Self::Invalid(diagnostics) => {
                for d in diagnostics {
                    eprintln!("{d}");
                }
            }
            Self::Failed(message) => eprintln!("error: {message}"),
            Self::Unreachable(message) | Self::NotFound(message) => eprintln!("error: {message}"),
            Self::Reported => {}
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(d) => write!(f, "{}", d.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")),
            Self::Failed(m) | Self::Unreachable(m) | Self::NotFound(m) => f.write_str(m),
            Self::Reported => f.write_str("failed"),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Invalid(d) => Self::Invalid(d),
            other => Self::Failed(other.to_string()),
        }
    }
}

/// The loaded configuration, shared by the commands.
pub struct Context {
    pub config: LoadedConfig,
}

impl Context {
    pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Self, Failure> {
        let mut overrides = Overrides::from_env(std::env::vars());
        for set in sets {
            overrides.push_set(set).map_err(Failure::Failed)?;
        }
        Ok(Self { config: config::load(file, overrides)? })
    }

    /// The configuration's own problems (not the catalog's, not the workflows').
    pub fn config_problems(&self) -> Vec<Diagnostic> {
        config::check(&self.config)
    }

    /// Resolves the catalog: every tenant checked, placements rendered. Problems with
    /// individual tenants come back as diagnostics at the line (static list) or at the
    /// catalog query (SQL source); the tenants without problems are still returned.
    pub async fn catalog(&self) -> Result<(Catalog, Vec<Diagnostic>), Failure> {
        let c = &self.config.config;
        let (specs, mut problems) = match c.catalog.source {
            CatalogSource::Static => (
                c.catalog.tenants.iter().cloned().enumerate().map(|(i, t)| (TenantOrigin::Static(i), t)).collect(),
                Vec::new(),
            ),
            CatalogSource::Sql => {
                let query = c.catalog.sql.as_ref().ok_or(Failure::Failed(CatalogError::MissingQuery.to_string()))?;
                match catalog::load_query_tenants(query, &c.hosts).await {
                    Ok(loaded) => loaded,
                    Err(e) if e.is_unreachable() => {
                        return Err(Failure::Unreachable(e.to_string()));
                    }
                    Err(e @ CatalogError::Query { .. }) => {
                        return Err(Failure::Invalid(vec![
                            self.config.error_at(&path!["catalog", "sql", "query"], e.to_string()),
                        ]));
                    }
                    Err(e) => return Err(Failure::Failed(e.to_string())),
                }
            }
        };
        let broken = c.services.iter().filter(|(_, s)| !s.is_sound(&c.hosts)).map(|(n, _)| n.clone()).collect();
        let (tenants, more) = catalog::resolve_tenants(specs, &c.services, &c.hosts, &broken);
        problems.extend(more);
        let diagnostics = problems.iter().map(|p| self.tenant_problem(p)).collect();
        Ok((Catalog { hosts: c.hosts.clone(), services: c.services.clone(), tenants }, diagnostics))
    }

    fn tenant_problem(&self, p: &TenantProblem) -> Diagnostic {
        match p.origin {
            TenantOrigin::Static(i) => {
                self.config.error_at(&path!["catalog", "tenants", i, p.field], p.message.clone())
            }
            _ => self.config.error_at(&path!["catalog", "sql", "query"], p.to_string()),
        }
    }

    /// The runtime of this process: run store, queue and database pools. Redis being
    /// unreachable is exit status 3.
    pub async fn runtime(&self) -> Result<std::sync::Arc<crate::runtime::worker::Runtime>, Failure> {
        let c = &self.config.config;
        let problems = self.config_problems();
        if !problems.is_empty() {
            return Err(Failure::Invalid(problems));
        }
        // Reachability is checked with a short patience; the connection then reconnects
        // by itself for as long as the process runs.
        let store = crate::runtime::store::RunStore::from_config(&c.redis, std::time::Duration::from_secs(3))
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let queue = crate::runtime::queue::Queue::connect(c.redis.url.expose(), &c.redis.prefix)
            .await
            .map_err(|e| Failure::Unreachable(e.to_string()))?;
        let per_pool = c.hosts.values().filter_map(|h| h.max_concurrency).max().unwrap_or(c.limits.per_host);
        let databases = std::sync::Arc::new(crate::engine::pools::Databases::new(
            c.hosts.clone(),
            per_pool,
            c.limits.max_pools as usize,
        ));
        let objects = self.objects().await?.map(std::sync::Arc::new);
        Ok(std::sync::Arc::new(
            crate::runtime::worker::Runtime::new(
                store,
                queue,
                databases,
                c.runtime.clone(),
                self.config.base_dir.clone(),
            )
            .with_services(c.services.clone())
            .with_objects(objects, c.backups.clone())
            .with_rds(std::sync::Arc::new(crate::rds::Rds::new(c.rds.clone()))),
        ))
    }

    /// The object store of `[storage]` (None without one), its relative `path` resolved
    /// against the config file's directory. A store that cannot be opened is exit status 3.
    pub async fn objects(&self) -> Result<Option<crate::storage::ObjectStore>, Failure> {
        match crate::storage::ObjectStore::open_loaded(&self.config).await {
            Some(opened) => Ok(Some(opened.map_err(|e| Failure::Unreachable(e.to_string()))?)),
            None => Ok(None),
        }
    }

    /// The catalog and the named workflow, checked against it, and the `--tenant` ids
    /// checked against the catalog: what `plan` and `run` need before anything else.
    pub async fn checked_workflow(
        &self,
        name: &str,
        only: &[String],
    ) -> Result<(Catalog, crate::workflow::Workflow), Failure> {
        use crate::workflow::{self, CheckContext};
        let catalog = self.checked_catalog().await?;
        let wf = workflow::find(&self.config.workflows_dir(), name).map_err(|d| Failure::Invalid(vec![d]))?;
        let context = CheckContext { services: &self.config.config.services, catalog: Some(&catalog) };
        let problems = workflow::check(&wf.spec, &wf.name, &wf.source, &context);
        if !problems.is_empty() {
            return Err(Failure::Invalid(problems));
        }
        if let Some(id) = only.iter().find(|id| catalog.tenant(id).is_none()) {
            return Err(Failure::Failed(format!("--tenant {id:?}: no such tenant in the catalog")));
        }
        Ok((catalog, wf))
    }

    /// Config and catalog, refusing to go on when either has problems.
    pub async fn checked_catalog(&self) -> Result<Catalog, Failure> {
        let mut problems = self.config_problems();
        if !problems.is_empty() {
            return Err(Failure::Invalid(problems));
        }
        let (catalog, tenant_problems) = self.catalog().await?;
        problems.extend(tenant_problems);
        if problems.is_empty() { Ok(catalog) } else { Err(Failure::Invalid(problems)) }
    }
}
