-- events: shared tables with a tenant_id column (row isolation), protected by row-level
-- security: a session sees the rows of the tenant named by the app.tenant_id setting.
-- (Table owners and superusers bypass RLS unless FORCE ROW LEVEL SECURITY is set.)

CREATE TABLE IF NOT EXISTS events (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL,
    kind        text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurred_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS events_tenant_id_occurred_at_idx ON events (tenant_id, occurred_at);

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON events;
CREATE POLICY tenant_isolation ON events
    USING (tenant_id = current_setting('app.tenant_id', true));

CREATE TABLE IF NOT EXISTS audit_log (
    id        bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    actor     text NOT NULL,
    action    text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS audit_log_tenant_id_at_idx ON audit_log (tenant_id, at);

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON audit_log;
CREATE POLICY tenant_isolation ON audit_log
    USING (tenant_id = current_setting('app.tenant_id', true));
