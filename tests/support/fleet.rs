//! A small fleet for the maintenance steps' tests: `core` (a database per tenant) and `clinic` (a schema per tenant in one database) on the test server, and optionally `ledger` (rows of every tenant in shared tables), filled by the test, with one workflow file.

use std::path::Path;
use std::time::Duration;

use super::{clear_redis, connect_db, exec, pg_admin, pg_url, redis_url, tenantry, unique, wait_for_state};

pub struct TwoServices {
    pub name: String,
    pub tenants: Vec<String>,
    dir: tempfile::TempDir,
    ledger: bool,
}

impl TwoServices {
    /// Creates each tenant's `core` database and `clinic` schema, calls `fill` on each (a
    /// connection to the database, and the schema to create things in: `public`, or
    /// `tenant_{id}` which exists already), and writes the config and
    /// `workflows/{workflow}.toml`.
    pub async fn new(
        prefix: &str,
        tenants: &[&str],
        workflow: (&str, &str),
        fill: impl AsyncFn(&mut sqlx::PgConnection, &str),
    ) -> Self {
        let name = unique(prefix);
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {name}_clinic")).await;
        for t in tenants {
            exec(&mut admin, &format!("CREATE DATABASE {name}_core_{t}")).await;
            fill(&mut connect_db(&format!("{name}_core_{t}")).await, "public").await;
            let mut clinic = connect_db(&format!("{name}_clinic")).await;
            exec(&mut clinic, &format!("CREATE SCHEMA tenant_{t}")).await;
            fill(&mut clinic, &format!("tenant_{t}")).await;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        let mut config = format!(
            r#"
[redis]
url = "{redis}"
prefix = "{name}"

[hosts.main]
engine = "postgres"
url = "{pg}"

[services.core]
engine = "postgres"
isolation = "database"
host = "main"
database = "{name}_core_{{tenant}}"

[services.clinic]
engine = "postgres"
isolation = "schema"
host = "main"
database = "{name}_clinic"
schema = "tenant_{{tenant}}"
"#,
            redis = redis_url(),
            pg = pg_url()
        );
        for t in tenants {
            config.push_str(&format!("\n[[catalog.tenants]]\nid = \"{t}\"\nservices = [\"core\", \"clinic\"]\n"));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        let fleet = Self { name, tenants: tenants.iter().map(|t| t.to_string()).collect(), dir, ledger: false };
        fleet.workflow(workflow.0, workflow.1);
        fleet
    }

    /// Adds `ledger`, a `row` isolation service (tenant column `tenant_id`) in a database of
    /// its own, created here and filled by the SQL `fill`, used by every tenant.
    pub async fn add_ledger(&mut self, fill: &str) {
        let mut admin = pg_admin().await;
        exec(&mut admin, &format!("CREATE DATABASE {}", self.ledger())).await;
        exec(&mut connect_db(&self.ledger()).await, fill).await;
        let service = format!(
            "\n[services.ledger]\nengine = \"postgres\"\nisolation = \"row\"\nhost = \"main\"\ndatabase = \"{}\"\ntenant_column = \"tenant_id\"\n",
            self.ledger()
        );
        self.edit_config(|config| {
            // Services go before the catalog's tenants (which end the file).
            let at = config.find("\n[[catalog.tenants]]").unwrap_or(config.len());
            let mut config =
                config.replace("services = [\"core\", \"clinic\"]", "services = [\"core\", \"clinic\", \"ledger\"]");
            config.insert_str(at, &service);
            config
        });
        self.ledger = true;
    }

    /// `ledger`'s shared database.
    pub fn ledger(&self) -> String {
        format!("{}_ledger", self.name)
    }

    /// Rewrites `tenantry.toml` with `f`.
    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let path = self.path().join("tenantry.toml");
        let config = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, f(config)).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn workflow(&self, name: &str, text: &str) {
        std::fs::write(self.path().join("workflows").join(format!("{name}.toml")), text).unwrap();
    }

    /// `core`'s database of `tenant`.
    pub fn core(&self, tenant: &str) -> String {
        format!("{}_core_{tenant}", self.name)
    }

    /// `clinic`'s shared database.
    pub fn clinic(&self) -> String {
        format!("{}_clinic", self.name)
    }

    /// Starts `workflow` and waits (up to a minute) until it ends; its status.
    pub fn run_and_wait(&self, workflow: &str) -> serde_json::Value {
        let out = tenantry(self.path(), &["run", workflow], &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        let run = out.stdout().trim().to_string();
        wait_for_state(self.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(60))
    }

    pub async fn drop(self) {
        clear_redis(&self.name).await;
        let mut admin = pg_admin().await;
        let mut dbs = vec![self.clinic()];
        if self.ledger {
            dbs.push(self.ledger());
        }
        dbs.extend(self.tenants.iter().map(|t| self.core(t)));
        for db in dbs {
            exec(&mut admin, &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        }
    }
}
