-- Which of the given schemas exist ($1), and whether each has a history table ($2).
SELECT n.nspname::text AS schema,
       EXISTS (
         SELECT 1 FROM pg_catalog.pg_class c
         WHERE c.relnamespace = n.oid AND c.relname = $2 AND c.relkind IN ('r', 'p')
       ) AS has_history
FROM pg_catalog.pg_namespace n
WHERE n.nspname = ANY($1)
