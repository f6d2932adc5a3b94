#!/usr/bin/env bash
# Runs the runtime throughput benchmark (benches/runtime.rs) against the local services and
# writes its results table into docs/benchmarks.md (between the runtime markers).
#
#   1. makes sure PostgreSQL, Redis and a PgBouncer for the many-hosts rows run (services.sh:
#      starts or installs them when absent)
#      and exports TENANTRY_TEST_PG_URL / TENANTRY_TEST_REDIS_URL, which the bench uses,
#   2. runs `cargo bench --bench runtime` (release build; the first build of the dependency set
#      takes a while) with every argument passed through to the bench.
#
# Usage: deploy/local/bench.sh [--tenants N] [--concurrency C] [--pool P] [--workers W]
#                              [--timeout SECS] [--no-docs]
#   e.g. deploy/local/bench.sh                   (5,000 tenants, the documented settings)
#        deploy/local/bench.sh --tenants 500 --no-docs
#
# The bench creates its own database and Redis key prefix and removes both when it ends. It
# exits non-zero when a run does not succeed (every tenant, every receipt) within the timeout.
# Run it on an otherwise idle machine: the table reports what else used the CPU meanwhile.
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

ensure_postgres
ensure_redis
export_test_env
# The many-hosts rows are measured directly and through a PgBouncer (see the bench's header).
ensure_pgbouncer
export TENANTRY_BENCH_PGBOUNCER_PORT=$TENANTRY_PGBOUNCER_PORT

cd "$root"
exec cargo bench --bench runtime -- "$@"
