-- Run once by the postgres image when its data directory is new: the shared databases of the
-- services whose tenants live in one database (deploy/compose/tenantry.toml). The per-tenant
-- databases of `core` are created by the provision workflow.
CREATE DATABASE clinic;
CREATE DATABASE events;
