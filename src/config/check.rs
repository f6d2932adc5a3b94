//! Checks of a parsed configuration that serde cannot express: names, references between sections, templates, required combinations.

use super::{LoadedConfig, StorageKind};
use crate::catalog::{CatalogSource, Isolation, check_name, check_template};
use crate::diagnostic::Diagnostic;
use crate::path;

/// Every problem of the configuration itself (not the catalog's tenants, not workflows).
pub fn check(loaded: &LoadedConfig) -> Vec<Diagnostic> {
    let c = &loaded.config;
    let mut out = Vec::new();
    let mut err = |p: crate::source::KeyPath, m: String| out.push(loaded.error_at(&p, m));

    if !matches!(c.redis.url.scheme(), "redis" | "rediss") {
        err(path!["redis", "url"], format!("redis.url must be a redis:// or rediss:// URL, not {}", c.redis.url));
    }
    if c.redis.prefix.is_empty() || c.redis.prefix.contains(|c: char| c.is_whitespace() || c == '{' || c == '}') {
        err(
            path!["redis", "prefix"],
            format!(
                "redis.prefix {:?} must be non-empty, without spaces and without {{ or }} (braces would make it the Redis Cluster hash tag of every key)",
                c.redis.prefix
            ),
        );
    }
    for (i, node) in c.redis.cluster.iter().enumerate() {
        if !matches!(node.scheme(), "redis" | "rediss") {
            err(
                path!["redis", "cluster", i],
                format!("redis.cluster[{i}] must be a redis:// or rediss:// URL, not {node}"),
            );
        }
    }
    if let Some(api) = &c.api {
        if api.address.parse::<std::net::SocketAddr>().is_err() {
            err(
                path!["api", "address"],
                format!("api.address must be host:port, like 127.0.0.1:8080, not {:?}", api.address),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in api.tokens.iter().enumerate() {
            if !names.insert(t.name.as_str()) {
                err(path!["api", "tokens", i, "name"], format!("api.tokens: the name {:?} is used twice", t.name));
            }
            if t.env.is_some() == t.file.is_some() {
                err(
                    path!["api", "tokens", i],
                    format!(
                        "api.tokens {:?}: give the token's `env` (a variable name) or its `file`, one of them",
                        t.name
                    ),
                );
            }
        }
    }
    if c.limits.per_host == 0 {
        err(path!["limits", "per_host"], "limits.per_host must be at least 1".into());
    }
    let rt = &c.runtime;
    if rt.worker_concurrency == 0 {
        err(path!["runtime", "worker_concurrency"], "runtime.worker_concurrency must be at least 1".into());
    }
    if rt.lease.0 < std::time::Duration::from_secs(2) {
        err(
            path!["runtime", "lease"],
            format!("runtime.lease {} is too short; leases are renewed every third of it (use 2s or more)", rt.lease),
        );
    }
    if rt.sweep_interval.0.is_zero() || rt.dispatch_grace.0.is_zero() {
        err(path!["runtime"], "runtime.sweep_interval and runtime.dispatch_grace must be longer than zero".into());
    }
    if c.limits.plan_connections == 0 {
        err(path!["limits", "plan_connections"], "limits.plan_connections must be at least 1".into());
    }

    for (name, host) in &c.hosts {
        if let Err(e) = check_name(name, "host name") {
            err(path!["hosts", name], e);
        }
        if !host.engine.accepts_scheme(host.url.scheme()) {
            err(
                path!["hosts", name, "url"],
                format!(
                    "host {name}: a {} host needs a {} URL, not {}",
                    host.engine,
                    scheme_hint(host.engine),
                    host.url
                ),
            );
        }
        if host.max_concurrency == Some(0) {
            err(path!["hosts", name, "max_concurrency"], format!("host {name}: max_concurrency must be at least 1"));
        }
        if let Some(scratch) = &host.scratch_host {
            match c.hosts.get(scratch) {
                None => err(
                    path!["hosts", name, "scratch_host"],
                    format!("host {name}: unknown scratch_host {scratch:?} (hosts: {})", keys(&c.hosts)),
                ),
                Some(_) if host.engine != crate::catalog::Engine::Postgres => err(
                    path!["hosts", name, "scratch_host"],
                    format!(
                        "host {name}: scratch_host is for restore verification, which runs on PostgreSQL hosts only"
                    ),
                ),
                Some(s) if s.engine != crate::catalog::Engine::Postgres => err(
                    path!["hosts", name, "scratch_host"],
                    format!(
                        "host {name}: scratch_host {scratch} is a {} host; backups restore on PostgreSQL",
                        s.engine
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    for (name, service) in &c.services {
        if let Err(e) = check_name(name, "service name") {
            err(path!["services", name], e);
        }
        match c.hosts.get(&service.host) {
            None => err(
                path!["services", name, "host"],
                format!("service {name}: unknown host {:?} (hosts: {})", service.host, keys(&c.hosts)),
            ),
            Some(host) if host.engine != service.engine => err(
                path!["services", name, "engine"],
                format!("service {name} is {} but its host {} is {}", service.engine, service.host, host.engine),
            ),
            Some(_) => {}
        }
        for (key, template) in [("database", Some(service.database.as_str())), ("schema", service.schema.as_deref())] {
            if let Some(t) = template
                && let Err(e) = check_template(t)
            {
                err(path!["services", name, key], format!("service {name}: {e}"));
            }
        }
        let per_tenant = match service.isolation {
            Isolation::Database => Some(("database", service.database.as_str())),
            Isolation::Schema => Some(("schema", service.schema_template())),
            Isolation::Row => None,
        };
        if let Some((key, template)) = per_tenant
            && !template.contains("{tenant}")
        {
            err(
                path!["services", name, key],
                format!(
                    "service {name} has {} isolation, so its {key} template must contain {{tenant}} (it is {template:?}); otherwise every tenant would share one {key}",
                    service.isolation
                ),
            );
        }
        if service.isolation != Isolation::Database && service.database.contains("{tenant}") {
            err(
                path!["services", name, "database"],
                format!(
                    "service {name} has {} isolation: its database is shared and cannot contain {{tenant}}",
                    service.isolation
                ),
            );
        }
        match (service.isolation, &service.tenant_column) {
            (Isolation::Row, None) => err(
                path!["services", name],
                format!("service {name} has row isolation and needs tenant_column (the column holding the tenant id)"),
            ),
            (Isolation::Row, Some(col)) if col.is_empty() => {
                err(path!["services", name, "tenant_column"], format!("service {name}: tenant_column is empty"))
            }
            (Isolation::Database | Isolation::Schema, Some(_)) => err(
                path!["services", name, "tenant_column"],
                format!("service {name}: tenant_column only applies to row isolation"),
            ),
            _ => {}
        }
        if service.engine == crate::catalog::Engine::Mariadb && service.isolation == Isolation::Schema {
            err(
                path!["services", name, "isolation"],
                format!("service {name}: MariaDB has no schemas inside a database; use database isolation"),
            );
        }
        if let Some(template) = &service.rds_instance
            && let Err(e) = check_rds_template(template, name, service.isolation)
        {
            err(path!["services", name, "rds_instance"], format!("service {name}: {e}"));
        }
        if let Some(dir) = &service.migrations
            && !loaded.resolve_path(dir).is_dir()
        {
            err(
                path!["services", name, "migrations"],
                format!("service {name}: migrations directory {} does not exist", loaded.resolve_path(dir).display()),
            );
        }
        if let Some(dir) = &service.seeds
            && !loaded.resolve_path(dir).is_dir()
        {
            err(
                path!["services", name, "seeds"],
                format!("service {name}: seeds directory {} does not exist", loaded.resolve_path(dir).display()),
            );
        }
    }

    match (c.catalog.source, &c.catalog.sql) {
        (CatalogSource::Sql, None) => {
            err(path!["catalog", "source"], "catalog.source is \"sql\" but [catalog.sql] is missing".into())
        }
        (CatalogSource::Sql, Some(q)) => {
            match c.hosts.get(&q.host) {
                None => err(
                    path!["catalog", "sql", "host"],
                    format!("catalog.sql: unknown host {:?} (hosts: {})", q.host, keys(&c.hosts)),
                ),
                Some(h) if h.engine != crate::catalog::Engine::Postgres => err(
                    path!["catalog", "sql", "host"],
                    "catalog.sql: the catalog query runs on PostgreSQL hosts only for now".into(),
                ),
                Some(_) => {}
            }
            if !c.catalog.tenants.is_empty() {
                err(
                    path!["catalog", "tenants"],
                    "catalog.source is \"sql\": the static [[catalog.tenants]] list would be ignored; remove it or set source = \"static\"".into(),
                );
            }
        }
        (CatalogSource::Static, Some(_)) => err(
            path!["catalog", "sql"],
            "[catalog.sql] is set but catalog.source is \"static\"; set source = \"sql\" to use the query".into(),
        ),
        (CatalogSource::Static, None) => {}
    }

    for (key, age) in [("max_backup_age", c.backups.max_backup_age), ("max_verify_age", c.backups.max_verify_age)] {
        if age.0.is_zero() {
            err(path!["backups", key], format!("backups.{key} must be longer than zero (every tenant would be stale)"));
        }
    }

    if let Some(s) = &c.storage {
        match s.kind {
            StorageKind::S3 if s.bucket.as_deref().unwrap_or("").is_empty() => {
                err(path!["storage"], "storage.kind is \"s3\" and needs a bucket".into())
            }
            StorageKind::Fs if s.path.is_none() => {
                err(path!["storage"], "storage.kind is \"fs\" and needs a path".into())
            }
            _ => {}
        }
        match s.sse.as_deref() {
            None | Some("AES256") => {}
            Some("aws:kms") if s.kms_key_id.is_none() => {
                err(path!["storage", "sse"], "storage.sse = \"aws:kms\" needs storage.kms_key_id".into())
            }
            Some("aws:kms") => {}
            Some(other) => err(
                path!["storage", "sse"],
                format!("storage.sse must be \"AES256\" (SSE-S3) or \"aws:kms\" (SSE-KMS), not {other:?}"),
            ),
        }
        if s.kms_key_id.is_some() && s.sse.as_deref() != Some("aws:kms") {
            err(path!["storage", "kms_key_id"], "storage.kms_key_id is only used with sse = \"aws:kms\"".into());
        }
        if let Some(size) = s.part_size
            && size.0 < 5 << 20
        {
            err(
                path!["storage", "part_size"],
                format!("storage.part_size must be at least 5MiB (S3's minimum), not {} bytes", size.0),
            );
        }
        if s.parts_in_flight == Some(0) {
            err(path!["storage", "parts_in_flight"], "storage.parts_in_flight must be at least 1".into());
        }
        if s.access_key_id.is_some() != s.secret_access_key.is_some() {
            err(
                path!["storage"],
                "storage needs both access_key_id and secret_access_key, or neither (the standard AWS credential chain)".into(),
            );
        }
    }
    if let Some(r) = &c.rds {
        if let Some(endpoint) = &r.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            err(path!["rds", "endpoint"], format!("rds.endpoint must be an http:// or https:// URL, not {endpoint:?}"));
        }
        if r.region.as_deref() == Some("") {
            err(path!["rds", "region"], "rds.region is empty; remove it to use the AWS default region".into());
        }
        if r.access_key_id.is_some() != r.secret_access_key.is_some() {
            err(
                path!["rds"],
                "rds needs both access_key_id and secret_access_key, or neither (the standard AWS credential chain)"
                    .into(),
            );
        }
    }
    out
}

/// A service's `rds_instance` template: a tenant's own instance (database isolation, with
/// `{tenant}`), whose fixed parts are what an RDS instance identifier may hold.
fn check_rds_template(template: &str, service: &str, isolation: Isolation) -> Result<(), String> {
    check_template(template)?;
    if isolation != Isolation::Database {
        return Err(format!(
            "rds_instance names each tenant's own RDS instance, which only database isolation has (this service has {isolation} isolation)"
        ));
    }
    if !template.contains("{tenant}") {
        return Err(format!(
            "rds_instance {template:?} must contain {{tenant}}; otherwise every tenant would name the same instance"
        ));
    }
    // A sample rendering: tenant ids that make it invalid are reported per tenant.
    crate::rds::check_instance_id(&crate::catalog::render(template, "t", service))
        .map_err(|e| format!("rds_instance {template:?}: {e}"))
}

fn scheme_hint(engine: crate::catalog::Engine) -> &'static str {
    match engine {
        crate::catalog::Engine::Postgres => "postgres://",
        crate::catalog::Engine::Mariadb => "mysql://",
    }
}

fn keys<V>(map: &std::collections::BTreeMap<String, V>) -> String {
    if map.is_empty() { "none defined".to_string() } else { map.keys().cloned().collect::<Vec<_>>().join(", ") }
}
