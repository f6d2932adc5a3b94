//! The tenants' data of the backup tests (`verify_restore`, `restore`): a `core` database per tenant and a `clinic` schema per tenant in a shared database, each with a migration history, so that restores are checked down to the schema version.

use super::{connect_db, exec};

/// Creates database `db` holding a `core` tenant's tables: `customers` rows of customers,
/// `orders` rows of orders referencing them, and a migration history at version 2.
pub async fn core_database(admin: &mut sqlx::PgConnection, db: &str, tenant: &str, customers: usize, orders: usize) {
    exec(admin, &format!("CREATE DATABASE {db}")).await;
    let mut core = connect_db(db).await;
    exec(
        &mut core,
        &format!(
            "CREATE TABLE customers (id int PRIMARY KEY, name text);
             CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, total numeric);
             INSERT INTO customers SELECT g, '{tenant}-' || g FROM generate_series(1, {customers}) g;
             INSERT INTO orders SELECT g, 1 + g % {customers}, g * 1.5 FROM generate_series(1, {orders}) g;
             CREATE TABLE tenantry_migrations (version text PRIMARY KEY, state text NOT NULL);
             INSERT INTO tenantry_migrations VALUES ('1', 'applied'), ('2', 'applied');"
        ),
    )
    .await;
}

/// Creates schema `tenant_{tenant}` on `clinic` (a connection to the shared database) with
/// `visits` rows of visits (ids from a sequence) and a migration history.
pub async fn clinic_schema(clinic: &mut sqlx::PgConnection, tenant: &str, visits: usize) {
    exec(
        clinic,
        &format!(
            "CREATE SCHEMA tenant_{tenant}; CREATE TABLE tenant_{tenant}.visits (id serial PRIMARY KEY, note text);
             INSERT INTO tenant_{tenant}.visits (note) SELECT 'visit ' || g FROM generate_series(1, {visits}) g;
             CREATE TABLE tenant_{tenant}.tenantry_migrations (version text PRIMARY KEY, state text NOT NULL);
             INSERT INTO tenant_{tenant}.tenantry_migrations VALUES ('20260101000000', 'applied');"
        ),
    )
    .await;
}

/// The `[services.core]` (database per tenant) and `[services.clinic]` (schema per tenant)
/// sections of a config for the databases above, on host `main`, named after `name`.
pub fn services_config(name: &str) -> String {
    format!(
        r#"
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
"#
    )
}
