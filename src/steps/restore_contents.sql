-- What a restore target already holds, so that `tenantry restore` can refuse a non-empty
-- one naming what is in it: tables, views, sequences and functions of the schema $1 (or,
-- when $1 is null, of every schema of the database but the system's), and, for a whole
-- database, its schemas besides `public`. Objects that belong to an extension do not count.
WITH spaces AS (
    SELECT n.oid, n.nspname FROM pg_namespace n
    WHERE CASE WHEN $1::text IS NULL
               THEN n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
               ELSE n.nspname = $1 END
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                      AND d.objid = n.oid AND d.deptype = 'e')
), relations AS (
    SELECT c.relkind FROM pg_class c JOIN spaces s ON s.oid = c.relnamespace
    WHERE NOT (c.relkind IN ('r', 'p') AND c.relispartition)
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
)
SELECT
    (SELECT count(*) FROM relations WHERE relkind IN ('r', 'p', 'f')) AS tables,
    (SELECT count(*) FROM relations WHERE relkind IN ('v', 'm')) AS views,
    (SELECT count(*) FROM relations WHERE relkind = 'S') AS sequences,
    (SELECT count(*) FROM pg_proc p JOIN spaces s ON s.oid = p.pronamespace
     WHERE NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                       AND d.objid = p.oid AND d.deptype = 'e')) AS functions,
    (SELECT count(*) FROM spaces WHERE $1::text IS NULL AND nspname <> 'public') AS schemas
