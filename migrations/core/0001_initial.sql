-- core: insurance policies, claims and payments (one database per tenant).
-- Table names are not schema-qualified: tenantry runs migrations with the target's search_path.

CREATE TABLE IF NOT EXISTS policies (
    id            bigserial PRIMARY KEY,
    number        text NOT NULL UNIQUE,
    holder        text NOT NULL,
    premium_cents bigint NOT NULL CHECK (premium_cents >= 0),
    starts_on     date NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS claims (
    id           bigserial PRIMARY KEY,
    policy_id    bigint NOT NULL REFERENCES policies (id),
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    status       text NOT NULL DEFAULT 'open',
    filed_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS claims_policy_id_idx ON claims (policy_id);
CREATE INDEX IF NOT EXISTS claims_filed_at_idx ON claims (filed_at);

CREATE TABLE IF NOT EXISTS payments (
    id           bigserial PRIMARY KEY,
    policy_id    bigint NOT NULL REFERENCES policies (id),
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    paid_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS payments_policy_id_idx ON payments (policy_id);
CREATE INDEX IF NOT EXISTS payments_paid_at_idx ON payments (paid_at);
