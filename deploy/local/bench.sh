#!/usr/bin/env bash
# Runs a benchmark against the local services and writes its results table into
# docs/benchmarks.md (between that bench's markers):
#
#   runtime (the default): benches/runtime.rs, the runtime's throughput over schema tenants;
#   backup:                benches/backup.rs, backups to S3 and restore verification of
#                          database tenants next to pg_dump / pg_restore, and a worker's peak
#                          memory while backing up one large tenant;
#   maintenance:           benches/maintenance.rs, the purge, analyze_indexes and vacuum steps next
#                          to a DELETE, the same catalog query per schema, and vacuumdb.
#
#   1. makes sure the services the bench needs run (services.sh: starts or installs them
#      when absent): PostgreSQL and Redis, plus a PgBouncer for the runtime bench's
#      many-hosts rows, or the S3 server (s3s-fs) for the backup bench (maintenance needs
#      PostgreSQL and Redis only); exports
#      TENANTRY_TEST_PG_URL / TENANTRY_TEST_REDIS_URL / TENANTRY_TEST_S3_*, which the benches use,
#   2. runs `cargo bench --bench NAME` (release build; the first build of the dependency set
#      takes a while) with every other argument passed through to the bench.
#
# Usage: deploy/local/bench.sh [runtime] [--tenants N] [--concurrency C] [--pool P] [--workers W]
#                              [--timeout SECS] [--no-docs]
#        deploy/local/bench.sh backup [--tenants N] [--size MB] [--concurrency C] [--big MIB]
#                              [--timeout SECS] [--wait-idle SECS] [--no-docs]
#        deploy/local/bench.sh maintenance [--rows N] [--batch-size B] [--schemas S] [--databases D]
#                              [--concurrency C] [--timeout SECS] [--wait-idle SECS] [--no-docs]
#   e.g. deploy/local/bench.sh                   (5,000 tenants, the documented settings)
#        deploy/local/bench.sh --tenants 500 --no-docs
#        deploy/local/bench.sh backup            (50 tenants of 20 MB, 4 at once, a 1 GiB tenant)
#        deploy/local/bench.sh backup --tenants 5 --size 2 --big 64 --no-docs
#        deploy/local/bench.sh maintenance      (1,000,000 rows, 1,000 schemas, 100 databases)
#        deploy/local/bench.sh maintenance --rows 100000 --schemas 100 --databases 10 --no-docs
#
# Each bench creates its own databases, Redis key prefix (and S3 prefix) and removes them when
# it ends. It exits non-zero when a run or a check fails. Run it on an otherwise idle machine:
# the table reports what else used the CPU meanwhile.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=deploy/local/services.sh
source "$here/services.sh"

for arg in "$@"; do
    case $arg in
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
    esac
done

bench=runtime
case ${1:-} in
    runtime | backup | maintenance)
        bench=$1
        shift
        ;;
esac

ensure_postgres
ensure_redis
case $bench in
    runtime)
        # The many-hosts rows are measured directly and through a PgBouncer (see the bench's header).
        ensure_pgbouncer
        export TENANTRY_BENCH_PGBOUNCER_PORT=$TENANTRY_PGBOUNCER_PORT
        ;;
    backup)
        ensure_s3
        ;;
    maintenance) ;;
esac
export_test_env

cd "$root"
exec cargo bench --bench "$bench" -- "$@"
