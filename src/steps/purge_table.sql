-- The table a purge deletes from ($1 schema, $2 table), with the type of its timestamp
-- column ($3) and of the tenant column ($4, row isolation), a valid, non-partial b-tree
-- index whose first column is the timestamp column (for row isolation: whose first two are
-- the tenant column and the timestamp column), whether it has inheritance children, and
-- its rows per block (for block-range batches).
SELECT c.oid::int8 AS oid,
       c.relkind::text AS kind,
       c.relhassubclass AS has_children,
       format_type(ts.atttypid, NULL) AS column_type,
       format_type(tc.atttypid, tc.atttypmod) AS tenant_type,
       (SELECT format('%I', ic.relname)
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
        WHERE i.indrelid = c.oid AND i.indisvalid AND i.indpred IS NULL AND ts.attnum IS NOT NULL
          AND am.amname = 'btree'
          AND CASE WHEN tc.attnum IS NULL THEN i.indkey[0] = ts.attnum
                   ELSE i.indkey[0] = tc.attnum AND i.indkey[1] = ts.attnum END
        ORDER BY ic.relname
        LIMIT 1) AS index,
       CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples / c.relpages ELSE 100 END::float8 AS rows_per_block
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute ts ON ts.attrelid = c.oid AND ts.attname = $3 AND ts.attnum > 0 AND NOT ts.attisdropped
LEFT JOIN pg_attribute tc ON tc.attrelid = c.oid AND tc.attname = $4 AND tc.attnum > 0 AND NOT tc.attisdropped
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
