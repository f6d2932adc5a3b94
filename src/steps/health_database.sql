-- Health of the current database: size, transaction-id age, connections, and transactions
-- open longer than $1 seconds (other than this session).
SELECT pg_database_size(current_database())::bigint AS database_bytes,
       (SELECT age(datfrozenxid) FROM pg_database WHERE datname = current_database())::bigint AS xid_age,
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())::bigint AS connections,
       (SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND xact_start < now() - make_interval(secs => $1))::bigint AS long_transactions,
       (SELECT extract(epoch FROM max(now() - xact_start)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid())::float8 AS oldest_s
