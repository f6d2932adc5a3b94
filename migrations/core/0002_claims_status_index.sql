-- tenantry:no-transaction
-- Claims are listed by status on the dashboard. CONCURRENTLY builds the index without
-- blocking writes, which cannot happen inside a transaction: tenantry runs this file
-- statement by statement and marks it dirty if it stops half-way.
CREATE INDEX CONCURRENTLY IF NOT EXISTS claims_status_idx ON claims (status);
