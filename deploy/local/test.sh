#!/usr/bin/env bash
# Runs tenantry's whole test suite against local services (what CI runs, through .ci/run):
# starts PostgreSQL, MariaDB, Redis, a local Redis Cluster, s3s-fs and moto when they are
# not running (installing them when absent), exports TENANTRY_TEST_*, then runs
#
#   cargo fmt --all -- --check
#   cargo clippy --all-targets -- -D warnings
#   cargo nextest run --no-fail-fast     (cargo test when cargo-nextest is not installed)
#   cargo test --doc                     (when the crate has doc tests)
#   the demo, and deploy/local/check-manifests.sh (the deployment files' schemas)
#
# Every step runs even when an earlier one failed; the exit status is non-zero when any failed.
# Extra arguments go to the test runner, e.g. `deploy/local/test.sh -E 'test(catalog)'`
# (nextest) or `deploy/local/test.sh catalog` (cargo test).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=deploy/local/services.sh
source "$here/services.sh"

header() { printf '\n==> %s\n' "$*" >&2; }

header "services"
ensure_postgres
ensure_mariadb
ensure_redis
ensure_redis_cluster
ensure_s3
ensure_moto
sweep_s3_test_leftovers
export_test_env
print_test_env | sed 's/^export /  /' >&2

cd "$root"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-$([[ -t 2 ]] && echo auto || echo never)}

failed=()
step() {
    local name=$1
    shift
    header "$name: $*"
    local t0=$SECONDS
    if "$@" </dev/null; then
        printf '  -> %s: ok (%ss)\n' "$name" "$((SECONDS - t0))" >&2
    else
        printf '  -> %s: FAILED (exit %s, %ss)\n' "$name" "$?" "$((SECONDS - t0))" >&2
        failed+=("$name")
    fi
}

step fmt cargo fmt --all -- --check --color "$([[ -t 1 ]] && echo auto || echo never)"
step clippy cargo clippy --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    step tests cargo nextest run --no-fail-fast "$@"
    # nextest does not run doc tests. Only a library with a fenced code block in a doc comment
    # has any.
    if [[ -f src/lib.rs ]] && grep -rqE '^[[:space:]]*(///|//!).*```' src 2>/dev/null; then
        step doctests cargo test --doc
    fi
else
    printf '  -> cargo-nextest not installed: using cargo test (which runs the doc tests too)\n' >&2
    step tests cargo test --no-fail-fast "$@"
fi

# The demo is part of the product: it must keep working, and its fleet must resolve to the
# placements the README promises (20 core, 200 clinic, 50 events).
demo_fleet_resolves() {
    bash deploy/local/demo.sh --keep-data >/dev/null &&
        "$CARGO_TARGET_DIR/debug/tenantry" --config deploy/local/tenantry.toml tenants --json |
        python3 -c 'import json, sys
counts = json.load(sys.stdin)["placements_per_service"]
expected = {"core": 20, "clinic": 200, "events": 50}
sys.exit(0 if counts == expected else f"demo placements {counts}, expected {expected}")'
}
step demo demo_fleet_resolves

# The deployment files (deploy/compose.yaml, deploy/kubernetes/, deploy/Dockerfile,
# deploy/systemd/) against their schemas, offline, then proof that each check catches a
# broken copy.
step manifests bash deploy/local/check-manifests.sh --self-test

if ((${#failed[@]})); then
    header "FAILED: ${failed[*]}"
    exit 1
fi
header "all passed"
