-- The migration history of one target (a tenant database, a tenant schema, or the shared
-- schema of a row-isolation service). Created in the target's schema.
CREATE TABLE IF NOT EXISTS tenantry_migrations (
  version      text PRIMARY KEY,     -- canonical version: "1", "1.2", "20250101000000"
  name         text NOT NULL,        -- name part of the file, e.g. "initial"
  checksum     text NOT NULL,        -- lower-case hex SHA-256 of the migration file's bytes
  state        text NOT NULL,        -- 'applied', or 'started' while/if it did not finish (dirty)
  started_at   timestamptz NOT NULL DEFAULT now(),
  finished_at  timestamptz,
  duration_ms  bigint,
  run_id       text
)
