-- clinic: patients, appointments and invoices (one schema per tenant in a shared database).
-- Table names are not schema-qualified: tenantry sets search_path to the tenant's schema.

CREATE TABLE IF NOT EXISTS patients (
    id         bigserial PRIMARY KEY,
    full_name  text NOT NULL,
    born_on    date,
    email      text,
    phone      text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS appointments (
    id               bigserial PRIMARY KEY,
    patient_id       bigint NOT NULL REFERENCES patients (id),
    starts_at        timestamptz NOT NULL,
    duration_minutes integer NOT NULL DEFAULT 30 CHECK (duration_minutes > 0),
    kind             text NOT NULL,
    status           text NOT NULL DEFAULT 'scheduled'
);

CREATE INDEX IF NOT EXISTS appointments_patient_id_idx ON appointments (patient_id);
CREATE INDEX IF NOT EXISTS appointments_starts_at_idx ON appointments (starts_at);

CREATE TABLE IF NOT EXISTS invoices (
    id             bigserial PRIMARY KEY,
    patient_id     bigint NOT NULL REFERENCES patients (id),
    appointment_id bigint REFERENCES appointments (id),
    amount_cents   bigint NOT NULL CHECK (amount_cents >= 0),
    issued_at      timestamptz NOT NULL DEFAULT now(),
    paid_at        timestamptz
);

CREATE INDEX IF NOT EXISTS invoices_patient_id_idx ON invoices (patient_id);
