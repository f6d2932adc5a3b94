-- Every index of the database's user schemas ($1: one schema, or NULL for all), with what
-- analyze_indexes judges it by. One query per database: schema tenants share it.
SELECT n.nspname::text AS schema,
       t.relname::text AS table,
       i.relname::text AS index,
       i.oid::int8 AS oid,
       am.amname::text AS method,
       ARRAY(SELECT coalesce(a.attname::text, '(expression)')
             FROM unnest(x.indkey::int2[]) WITH ORDINALITY k(num, ord)
             LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.num
             ORDER BY k.ord) AS columns,
       x.indkey::text AS keys,
       x.indclass::text AS classes,
       pg_get_expr(x.indexprs, x.indrelid) AS expressions,
       pg_get_expr(x.indpred, x.indrelid) AS predicate,
       x.indisunique AS unique,
       EXISTS (SELECT 1 FROM pg_constraint c
               WHERE c.conindid = i.oid AND c.contype IN ('p', 'u', 'x')) AS backs_constraint,
       x.indisvalid AS valid,
       coalesce(s.idx_scan, 0) AS scans,
       pg_relation_size(i.oid) AS bytes,
       i.relpages::int8 AS pages,
       i.reltuples::float8 AS tuples,
       (SELECT sum(st.avg_width)::int8
        FROM pg_attribute a
        JOIN pg_stats st ON st.schemaname = n.nspname AND st.tablename = t.relname AND st.attname = a.attname
        WHERE a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey::int2[])
        HAVING count(*) = x.indnatts) AS width
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = i.relam
LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.oid
WHERE t.relkind IN ('r', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_%'
  AND ($1::text IS NULL OR n.nspname = $1)
ORDER BY 1, 2, 3
