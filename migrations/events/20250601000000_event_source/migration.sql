-- Where an event came from (web, api, import). Shared table: applied once for all tenants.
ALTER TABLE events ADD COLUMN source text;
