-- Appointment reminders: when the last one was sent. Nullable, no default: adding it is a
-- catalog-only change that does not rewrite the table.
ALTER TABLE appointments ADD COLUMN reminded_at timestamptz;
