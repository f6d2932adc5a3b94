# shellcheck shell=bash disable=SC2016,SC2119,SC2120
# Local services for tenantry's tests and demo: PostgreSQL, MariaDB, Redis, an S3-compatible
# store (s3s-fs) and the RDS-API emulator (moto).
#
# Source this file from bash (it is `set -euo pipefail` friendly and sets no shell options
# itself), then call the functions:
#
#   ensure_postgres   PostgreSQL on 127.0.0.1:5432, user postgres without a password
#   ensure_mariadb    MariaDB on 127.0.0.1:3306, root with an empty password
#   ensure_redis      Redis on 127.0.0.1:6379 (ensure_redis PORT for another port)
#   ensure_redis_cluster  a Redis Cluster of three primaries on 127.0.0.1:7000-7002
#                     (TENANTRY_REDIS_CLUSTER_PORT moves the first port; bus ports are +10000)
#   ensure_s3         s3s-fs 0.14.1 on a free port, bucket `tenantry`
#   ensure_moto       moto_server (RDS API) on a free port
#   ensure_all        all of the above
#   sweep_s3_test_leftovers  deletes test prefixes older than an hour from the local S3 bucket
#   export_test_env   exports TENANTRY_TEST_* (call after the ensure_* functions)
#
# Each function reuses a service that already runs, else starts it, else installs it (apt-get,
# cargo install, pip in a venv) and starts it, then waits (bounded) until it answers. No
# systemd is needed. Functions return non-zero with a message naming what failed.
#
# It can also be run directly:  bash deploy/local/services.sh [FUNCTION...]   (default:
# ensure_all, then it prints the test environment as `export` lines).
#
# Settings (environment):
#   TENANTRY_STATE_DIR   state of the services this file starts (default ~/.cache/tenantry/local):
#                        s3s-fs data, pid/port/log files, the moto venv, extra redis instances.
#   TENANTRY_WAIT_SECS   readiness timeout per service (default 60).
#   TENANTRY_REDIS_CLUSTER_PORT  first port of the local Redis Cluster (default 7000).
#   CARGO_TARGET_DIR     defaults to ~/.cache/tenantry/target, so CI clones share one build.

: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
: "${TENANTRY_STATE_DIR:=$HOME/.cache/tenantry/local}"
: "${TENANTRY_WAIT_SECS:=60}"
export TENANTRY_STATE_DIR
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tenantry/target}"

TENANTRY_PG_PORT=5432
TENANTRY_MYSQL_PORT=3306
TENANTRY_REDIS_PORT=6379
: "${TENANTRY_REDIS_CLUSTER_PORT:=7000}"
TENANTRY_S3S_FS_VERSION=0.14.1
TENANTRY_S3_ACCESS_KEY=tenantry
TENANTRY_S3_SECRET_KEY=tenantry-local-secret
TENANTRY_S3_BUCKET=tenantry
TENANTRY_MOTO_SPEC='moto[server]'

# ---------------------------------------------------------------------------------------------
# helpers

_svc_log() { printf '  -> %s\n' "$*" >&2; }
_svc_err() { printf 'error: %s\n' "$*" >&2; }

# Run a command as root (directly, or through sudo when we are not root).
_svc_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n -- "$@"
    else
        _svc_err "need root for: $* (not root, and no sudo)"
        return 1
    fi
}

# Run a command as another user (postgres, mysql): initdb/postgres refuse to run as root.
_svc_as() {
    local user=$1
    shift
    if [[ $(id -un) == "$user" ]]; then
        "$@"
    elif [[ $(id -u) -eq 0 ]] && command -v runuser >/dev/null 2>&1; then
        runuser -u "$user" -- "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n -u "$user" -- "$@"
    else
        _svc_err "cannot run as user $user: $*"
        return 1
    fi
}

_SVC_APT_UPDATED=${_SVC_APT_UPDATED:-}
_svc_apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        _svc_err "apt-get not found: install these packages by hand: $*"
        return 1
    fi
    if [[ -z $_SVC_APT_UPDATED ]]; then
        _svc_log "apt-get update"
        _svc_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || {
            _svc_err "apt-get update failed"
            return 1
        }
        _SVC_APT_UPDATED=1
    fi
    _svc_log "apt-get install -y $*"
    _svc_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 || {
        _svc_err "apt-get install -y $* failed"
        return 1
    }
}

# _svc_venv DIR WHAT: a Python venv in DIR with pip (for WHAT, named in messages), creating it
# when absent; installs python3, or Debian's python3-venv, when they are missing.
_svc_venv() {
    local venv=$1 what=$2
    [[ -x $venv/bin/pip ]] && return 0
    command -v python3 >/dev/null 2>&1 || _svc_apt_install python3 || return 1
    _svc_log "$what: creating the venv $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >&2; then
        # Debian's python3 needs the venv module from a separate package.
        rm -rf "$venv"
        _svc_apt_install python3-venv || return 1
        python3 -m venv "$venv" >&2 || {
            _svc_err "$what: \`python3 -m venv $venv\` failed"
            return 1
        }
    fi
}

# _svc_wait DESCRIPTION TIMEOUT_SECS COMMAND...: retry COMMAND until it succeeds.
_svc_wait() {
    local desc=$1 timeout=$2
    shift 2
    local deadline=$((SECONDS + timeout)) out
    while true; do
        if out=$("$@" 2>&1); then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            _svc_err "$desc not ready after ${timeout}s: \`$*\` failed${out:+: $out}"
            return 1
        fi
        sleep 0.5
    done
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
_svc_port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

_svc_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# True when the pid in FILE is alive and runs a program whose name contains NAME. A server
# whose working directory was deleted (one started from a CI clone by an older version of
# this file) resolves relative paths against nothing and fails requests: it is stopped, and
# counts as not running, so the caller starts a new one (on the same port).
_svc_pid_alive() {
    local file=$1 name=$2 pid i
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *"$name"* ]] || return 1
    if [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == *" (deleted)" ]]; then
        _svc_log "$name (pid $pid): its working directory was deleted; restarting it"
        kill "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || return 1
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        return 1
    fi
}

# _svc_spawn PIDFILE LOGFILE COMMAND...: start COMMAND detached (own session, no terminal,
# stdin from /dev/null, output to LOGFILE, no inherited descriptors) and record its pid.
_svc_spawn() {
    local pidfile=$1 logfile=$2
    shift 2
    rm -f "$pidfile"
    # shellcheck disable=SC2016
    # The server runs from / : the directory this is called from may be a clone that is
    # deleted while the server keeps running.
    setsid bash -c '
        pidfile=$1 logfile=$2; shift 2
        cd / || exit 1
        for fd in /proc/$$/fd/*; do
            fd=${fd##*/}
            if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        echo $$ >"$pidfile"
        exec "$@" </dev/null >>"$logfile" 2>&1
    ' _ "$pidfile" "$logfile" "$@" </dev/null >/dev/null 2>&1 &
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s $pidfile ]] && return 0
        sleep 0.1
    done
    _svc_err "could not start $1"
    return 1
}

# _svc_wait_port NAME PORT PIDFILE LOGFILE: wait until the spawned server accepts connections.
_svc_wait_port() {
    local name=$1 port=$2 pidfile=$3 logfile=$4
    local deadline=$((SECONDS + TENANTRY_WAIT_SECS))
    while ! _svc_port_open "$port"; do
        if ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then
            _svc_err "$name exited at start; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            _svc_err "$name not accepting connections on 127.0.0.1:$port after ${TENANTRY_WAIT_SECS}s (log: $logfile)"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

# The port to start a server on: the one it had last time when still free, else a free one.
_svc_pick_port() {
    local portfile=$1 port
    if [[ -s $portfile ]]; then
        port=$(<"$portfile")
        if [[ $port =~ ^[0-9]+$ ]] && ! _svc_port_open "$port"; then
            echo "$port"
            return 0
        fi
    fi
    _svc_free_port
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

_pg_ready() { pg_isready -q -h 127.0.0.1 -p "$TENANTRY_PG_PORT" -t 2; }
_pg_login() { psql -w -X -q -h 127.0.0.1 -p "$TENANTRY_PG_PORT" -U postgres -d postgres -Atc 'select 1' >/dev/null; }

# "version cluster" of the Debian cluster configured for our port, if any.
_pg_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    pg_lsclusters --no-header 2>/dev/null | awk -v p="$TENANTRY_PG_PORT" '$3 == p && !found { print $1, $2; found = 1 }'
}

ensure_postgres() {
    if ! command -v pg_isready >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null 2>&1 ||
        ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        if ! { command -v pg_isready >/dev/null 2>&1 && _pg_ready; }; then
            _svc_log "postgres: not installed, installing"
            _svc_apt_install postgresql postgresql-client || return 1
        fi
    fi

    if ! _pg_ready; then
        local cluster ver
        cluster=$(_pg_cluster || true)
        if [[ -z $cluster ]]; then
            if pg_lsclusters --no-header 2>/dev/null | awk '$2 == "main" { found = 1 } END { exit !found }'; then
                _svc_err "postgres: no cluster on port $TENANTRY_PG_PORT, and the name main is taken: $(pg_lsclusters --no-header | tr '\n' ';')"
                return 1
            fi
            ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -n | tail -n 1)
            [[ -n $ver ]] || {
                _svc_err "postgres: no server found under /usr/lib/postgresql"
                return 1
            }
            _svc_log "postgres: creating cluster $ver/main on port $TENANTRY_PG_PORT"
            _svc_root pg_createcluster "$ver" main --port "$TENANTRY_PG_PORT" >&2 || {
                _svc_err "postgres: \`pg_createcluster $ver main --port $TENANTRY_PG_PORT\` failed"
                return 1
            }
            cluster="$ver main"
        fi
        # shellcheck disable=SC2086
        set -- $cluster
        _svc_log "postgres: starting cluster $1/$2"
        # pg_ctlcluster (as root) runs the server as the cluster's owner (postgres).
        _svc_root install -d -o postgres -g postgres -m 2775 /var/run/postgresql || true
        # (It fails when the cluster is already running, e.g. still starting up: then wait.)
        _svc_root pg_ctlcluster --skip-systemctl-redirect "$1" "$2" start >&2 ||
            pg_lsclusters --no-header 2>/dev/null | awk -v v="$1" -v c="$2" '$1 == v && $2 == c && $4 == "online" { found = 1 } END { exit !found }' || {
            _svc_err "postgres: \`pg_ctlcluster --skip-systemctl-redirect $1 $2 start\` failed (log: /var/log/postgresql/postgresql-$1-$2.log)"
            return 1
        }
        _svc_wait postgres "$TENANTRY_WAIT_SECS" pg_isready -h 127.0.0.1 -p "$TENANTRY_PG_PORT" -t 2 || return 1
    fi

    if ! _pg_login 2>/dev/null; then
        # A fresh Debian cluster asks TCP clients for a password. The tests connect as
        # postgres@127.0.0.1 without one: allow that (local loopback only).
        _svc_log "postgres: allowing passwordless TCP login for postgres from 127.0.0.1 and ::1"
        local hba tmp
        hba=$(_svc_as postgres psql -X -At -p "$TENANTRY_PG_PORT" -d postgres -c 'show hba_file') || {
            _svc_err "postgres: cannot read hba_file over the local socket as user postgres"
            return 1
        }
        if ! _svc_root grep -q 'tenantry-local' "$hba"; then
            tmp=$(mktemp)
            {
                echo '# tenantry-local: passwordless loopback logins for tests and the demo'
                echo 'host    all    all    127.0.0.1/32    trust'
                echo 'host    all    all    ::1/128         trust'
                _svc_root cat "$hba"
            } >"$tmp"
            # Rewrite in place, keeping the file's owner and mode.
            _svc_root sh -c 'cat "$1" > "$2"' _ "$tmp" "$hba" || {
                rm -f "$tmp"
                _svc_err "postgres: could not write $hba"
                return 1
            }
            rm -f "$tmp"
        fi
        _svc_as postgres psql -X -q -At -p "$TENANTRY_PG_PORT" -d postgres -c 'select pg_reload_conf()' >/dev/null || {
            _svc_err "postgres: \`select pg_reload_conf()\` failed"
            return 1
        }
        _svc_wait "postgres login" 10 psql -w -X -q -h 127.0.0.1 -p "$TENANTRY_PG_PORT" -U postgres -d postgres -Atc 'select 1' || return 1
    fi
    _svc_log "postgres: ready on 127.0.0.1:$TENANTRY_PG_PORT"
}

# ---------------------------------------------------------------------------------------------
# MariaDB

_mysql_client() { if command -v mariadb >/dev/null 2>&1; then echo mariadb; else echo mysql; fi; }
_mysql_admin() { if command -v mariadb-admin >/dev/null 2>&1; then echo mariadb-admin; else echo mysqladmin; fi; }
_mysql_ping() { "$(_mysql_admin)" --connect-timeout=2 -h 127.0.0.1 -P "$TENANTRY_MYSQL_PORT" -uroot ping >/dev/null 2>&1; }
_mysql_login() { "$(_mysql_client)" --connect-timeout=2 -h 127.0.0.1 -P "$TENANTRY_MYSQL_PORT" -uroot -e 'select 1' >/dev/null; }

ensure_mariadb() {
    # `mariadb-admin ping` succeeds as soon as the server answers, even when access is denied.
    if ! { command -v "$(_mysql_admin)" >/dev/null 2>&1 && _mysql_ping; }; then
        local daemon
        daemon=$(command -v mariadbd || true)
        [[ -n $daemon ]] || { [[ -x /usr/sbin/mariadbd ]] && daemon=/usr/sbin/mariadbd; } || true
        [[ -n $daemon ]] || { [[ -x /usr/sbin/mysqld ]] && daemon=/usr/sbin/mysqld; } || true
        if [[ -z $daemon ]]; then
            _svc_log "mariadb: not installed, installing"
            _svc_apt_install mariadb-server mariadb-client || return 1
            daemon=/usr/sbin/mariadbd
            [[ -x $daemon ]] || daemon=/usr/sbin/mysqld
        fi
        # The package's post-install script may have started it (SysV init, no systemd).
        if ! _mysql_ping; then
            _svc_root install -d -o mysql -g mysql -m 755 /run/mysqld || true
            if [[ ! -d /var/lib/mysql/mysql ]]; then
                _svc_log "mariadb: initialising /var/lib/mysql"
                local installdb
                installdb=$(command -v mariadb-install-db || command -v mysql_install_db || true)
                _svc_root "${installdb:-mariadb-install-db}" --user=mysql --datadir=/var/lib/mysql >&2 || {
                    _svc_err "mariadb: \`mariadb-install-db --user=mysql --datadir=/var/lib/mysql\` failed"
                    return 1
                }
            fi
            _svc_log "mariadb: starting $daemon"
            _svc_root start-stop-daemon --start --oknodo --background --exec "$daemon" -- --user=mysql >&2 || {
                _svc_err "mariadb: \`start-stop-daemon --start --oknodo --background --exec $daemon\` failed"
                return 1
            }
            if ! _svc_wait mariadb "$TENANTRY_WAIT_SECS" "$(_mysql_admin)" --connect-timeout=2 -h 127.0.0.1 -P "$TENANTRY_MYSQL_PORT" -uroot ping; then
                [[ -r /var/log/mysql/error.log ]] && tail -n 20 /var/log/mysql/error.log >&2
                return 1
            fi
        fi
    fi

    if ! _mysql_login 2>/dev/null; then
        # A fresh install lets root in through the unix socket only (unix_socket auth). Add an
        # empty password for root, and root accounts for the loopback addresses (for servers
        # running with skip-name-resolve).
        _svc_log "mariadb: allowing root with an empty password over TCP from 127.0.0.1 and ::1"
        _svc_root "$(_mysql_client)" -uroot <<'SQL' || {
ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'root'@'::1' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'::1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
            _svc_err "mariadb: could not change root's authentication through the unix socket (as root)"
            return 1
        }
        _mysql_login || {
            _svc_err "mariadb: \`$(_mysql_client) -h 127.0.0.1 -uroot -e 'select 1'\` still fails"
            return 1
        }
    fi
    _svc_log "mariadb: ready on 127.0.0.1:$TENANTRY_MYSQL_PORT"
}

# ---------------------------------------------------------------------------------------------
# Redis

_redis_install() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        _svc_log "redis: not installed, installing"
        _svc_apt_install redis-server redis-tools || return 1
    fi
}

ensure_redis() {
    local port=${1:-$TENANTRY_REDIS_PORT}
    if command -v redis-cli >/dev/null 2>&1 &&
        [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
        _svc_log "redis: ready on 127.0.0.1:$port"
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        _redis_install || return 1
        # The package may have started one already (SysV init script).
        if [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
            _svc_log "redis: ready on 127.0.0.1:$port"
            return 0
        fi
    fi
    if _svc_port_open "$port"; then
        _svc_err "redis: 127.0.0.1:$port is taken by something that does not answer \`redis-cli -p $port ping\`"
        return 1
    fi
    local dir="$TENANTRY_STATE_DIR/redis-$port"
    mkdir -p "$dir"
    _svc_log "redis: starting on 127.0.0.1:$port (log: $dir/redis.log)"
    # No persistence: tests and the demo keep nothing in Redis across restarts.
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" </dev/null >&2 || {
        _svc_err "redis: \`redis-server --daemonize yes --port $port ...\` failed"
        return 1
    }
    _svc_wait redis "$TENANTRY_WAIT_SECS" bash -c '[[ $(redis-cli -h 127.0.0.1 -p "$1" ping) == PONG ]]' _ "$port" || {
        tail -n 20 "$dir/redis.log" >&2 || true
        return 1
    }
    _svc_log "redis: ready on 127.0.0.1:$port"
}

# ---------------------------------------------------------------------------------------------
# Redis Cluster: three primaries, no replicas (the run store's tests on a cluster)

_redis_cluster_ports() {
    echo "$TENANTRY_REDIS_CLUSTER_PORT" "$((TENANTRY_REDIS_CLUSTER_PORT + 1))" "$((TENANTRY_REDIS_CLUSTER_PORT + 2))"
}

# `CLUSTER INFO` field FIELD of the node on PORT (empty when it does not answer).
_redis_cluster_field() {
    redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | tr -d '\r' | awk -F: -v f="$2" '$1 == f { print $2 }'
}

# True when every node answers, sees the three nodes, all 16384 slots are assigned, and says ok.
_redis_cluster_ok() {
    local port
    for port in $(_redis_cluster_ports); do
        [[ $(_redis_cluster_field "$port" cluster_state) == ok ]] || return 1
        [[ $(_redis_cluster_field "$port" cluster_known_nodes) == 3 ]] || return 1
        [[ $(_redis_cluster_field "$port" cluster_slots_ok) == 16384 ]] || return 1
    done
}

# Starts the cluster-mode redis-server of PORT unless one answers there already.
_redis_cluster_node() {
    local port=$1 dir="$TENANTRY_STATE_DIR/redis-cluster/$1"
    if [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; then
        if [[ $(redis-cli -h 127.0.0.1 -p "$port" info cluster 2>/dev/null | tr -d '\r') != *cluster_enabled:1* ]]; then
            _svc_err "redis cluster: 127.0.0.1:$port runs a Redis that is not in cluster mode; stop it or set TENANTRY_REDIS_CLUSTER_PORT"
            return 1
        fi
        return 0
    fi
    local bus=$((port + 10000)) p
    for p in "$port" "$bus"; do
        if _svc_port_open "$p"; then
            _svc_err "redis cluster: 127.0.0.1:$p is taken by something else; stop it or set TENANTRY_REDIS_CLUSTER_PORT"
            return 1
        fi
    done
    mkdir -p "$dir"
    if ! _redis_cluster_spawn "$port" "$dir" 15 && [[ -e $dir/nodes.conf ]]; then
        # A node killed while writing nodes.conf may not start from it again. It holds test
        # data only: start it afresh (the cluster is then re-created below).
        _svc_log "redis cluster: node $port did not start from its nodes.conf; starting it afresh"
        rm -f "$dir/nodes.conf"
        _redis_cluster_spawn "$port" "$dir" "$TENANTRY_WAIT_SECS" || return 1
    elif ! _redis_cluster_ok_port "$port"; then
        return 1
    fi
}

# True when the node on PORT answers PING.
_redis_cluster_ok_port() {
    [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]
}

# _redis_cluster_spawn PORT DIR TIMEOUT: starts the node and waits until it answers.
_redis_cluster_spawn() {
    local port=$1 dir=$2 timeout=$3
    _svc_log "redis cluster: starting a node on 127.0.0.1:$port (log: $dir/redis.log)"
    # nodes.conf keeps the node's id and slots across restarts; no data is persisted.
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-node-timeout 5000 --save "" --appendonly no \
        --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" </dev/null >&2 || {
        _svc_err "redis cluster: \`redis-server --cluster-enabled yes --port $port ...\` failed"
        return 1
    }
    _svc_wait "redis cluster node $port" "$timeout" _redis_cluster_ok_port "$port" || {
        tail -n 20 "$dir/redis.log" >&2 || true
        return 1
    }
}

ensure_redis_cluster() {
    local port nodes=() fresh=1
    _redis_install || return 1
    if _redis_cluster_ok; then
        _svc_log "redis cluster: ready on 127.0.0.1:$TENANTRY_REDIS_CLUSTER_PORT-$((TENANTRY_REDIS_CLUSTER_PORT + 2))"
        return 0
    fi
    for port in $(_redis_cluster_ports); do
        _redis_cluster_node "$port" || return 1
        nodes+=("127.0.0.1:$port")
    done
    # Nodes restarted with their nodes.conf find each other again by themselves.
    for port in $(_redis_cluster_ports); do
        [[ $(_redis_cluster_field "$port" cluster_known_nodes) == 1 && $(_redis_cluster_field "$port" cluster_slots_assigned) == 0 ]] || fresh=0
    done
    if ((!fresh)) && _svc_wait "redis cluster (rejoining)" 15 _redis_cluster_ok 2>/dev/null; then
        _svc_log "redis cluster: ready on ${nodes[*]}"
        return 0
    fi
    if ((!fresh)); then
        # Half made, or left by a different set of nodes: start over (it holds test data only).
        _svc_log "redis cluster: resetting the nodes on ${nodes[*]} (they did not form a healthy cluster)"
        for port in $(_redis_cluster_ports); do
            redis-cli -h 127.0.0.1 -p "$port" flushall >/dev/null 2>&1 || true
            redis-cli -h 127.0.0.1 -p "$port" cluster reset hard >/dev/null || {
                _svc_err "redis cluster: \`redis-cli -p $port cluster reset hard\` failed"
                return 1
            }
        done
    fi
    _svc_log "redis cluster: creating it from ${nodes[*]}"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >&2 || {
        _svc_err "redis cluster: \`redis-cli --cluster create ${nodes[*]} --cluster-replicas 0 --cluster-yes\` failed"
        return 1
    }
    _svc_wait "redis cluster (cluster_state:ok on every node)" "$TENANTRY_WAIT_SECS" _redis_cluster_ok || return 1
    _svc_log "redis cluster: ready on ${nodes[*]}"
}

# ---------------------------------------------------------------------------------------------
# S3: s3s-fs

_s3s_fs_bin() {
    local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs"
    if [[ -x $cargo_bin ]]; then
        echo "$cargo_bin"
    else
        command -v s3s-fs 2>/dev/null
    fi
}

ensure_s3() {
    local dir="$TENANTRY_STATE_DIR/s3" bin port
    local pidfile="$dir/s3s-fs.pid" portfile="$dir/s3s-fs.port" logfile="$dir/s3s-fs.log"
    mkdir -p "$dir/data/$TENANTRY_S3_BUCKET"

    if _svc_pid_alive "$pidfile" s3s-fs && [[ -s $portfile ]] && _svc_port_open "$(<"$portfile")"; then
        TENANTRY_S3_PORT=$(<"$portfile")
        _svc_log "s3s-fs: ready on 127.0.0.1:$TENANTRY_S3_PORT (pid $(<"$pidfile"))"
        return 0
    fi

    bin=$(_s3s_fs_bin || true)
    if [[ -z $bin ]] || [[ $("$bin" --version 2>/dev/null) != "s3s-fs $TENANTRY_S3S_FS_VERSION" ]]; then
        command -v cargo >/dev/null 2>&1 || {
            _svc_err "s3s-fs: cargo not found (needed for \`cargo install s3s-fs@$TENANTRY_S3S_FS_VERSION\`)"
            return 1
        }
        _svc_log "s3s-fs: installing s3s-fs@$TENANTRY_S3S_FS_VERSION with cargo (takes ~3 minutes)"
        # Build in cargo's own temporary directory, not in the project's CARGO_TARGET_DIR.
        env -u CARGO_TARGET_DIR cargo install "s3s-fs@$TENANTRY_S3S_FS_VERSION" --features binary --locked >&2 || {
            _svc_err "s3s-fs: \`cargo install s3s-fs@$TENANTRY_S3S_FS_VERSION --features binary --locked\` failed"
            return 1
        }
        bin=$(_s3s_fs_bin) || {
            _svc_err "s3s-fs: installed, but not found in ${CARGO_HOME:-$HOME/.cargo}/bin"
            return 1
        }
    fi

    port=$(_svc_pick_port "$portfile") || return 1
    _svc_log "s3s-fs: starting on 127.0.0.1:$port (data: $dir/data, log: $logfile)"
    _svc_spawn "$pidfile" "$logfile" "$bin" --host 127.0.0.1 --port "$port" \
        --access-key "$TENANTRY_S3_ACCESS_KEY" --secret-key "$TENANTRY_S3_SECRET_KEY" "$dir/data" || return 1
    _svc_wait_port s3s-fs "$port" "$pidfile" "$logfile" || return 1
    echo "$port" >"$portfile"
    TENANTRY_S3_PORT=$port
    _svc_log "s3s-fs: ready on 127.0.0.1:$port (pid $(<"$pidfile"))"
}

# ---------------------------------------------------------------------------------------------
# RDS API: moto

ensure_moto() {
    local dir="$TENANTRY_STATE_DIR/moto" venv="$TENANTRY_STATE_DIR/venv" port
    local pidfile="$dir/moto.pid" portfile="$dir/moto.port" logfile="$dir/moto.log"
    mkdir -p "$dir"

    if _svc_pid_alive "$pidfile" moto_server && [[ -s $portfile ]] && _svc_port_open "$(<"$portfile")"; then
        TENANTRY_MOTO_PORT=$(<"$portfile")
        _svc_log "moto: ready on 127.0.0.1:$TENANTRY_MOTO_PORT (pid $(<"$pidfile"))"
        return 0
    fi

    if [[ ! -x $venv/bin/moto_server ]]; then
        _svc_venv "$venv" moto || return 1
        _svc_log "moto: pip install \"$TENANTRY_MOTO_SPEC\""
        "$venv/bin/pip" install --quiet --disable-pip-version-check "$TENANTRY_MOTO_SPEC" >&2 || {
            _svc_err "moto: \`$venv/bin/pip install \"$TENANTRY_MOTO_SPEC\"\` failed"
            return 1
        }
    fi

    port=$(_svc_pick_port "$portfile") || return 1
    _svc_log "moto: starting on 127.0.0.1:$port (log: $logfile)"
    _svc_spawn "$pidfile" "$logfile" "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" || return 1
    _svc_wait_port moto_server "$port" "$pidfile" "$logfile" || return 1
    echo "$port" >"$portfile"
    TENANTRY_MOTO_PORT=$port
    _svc_log "moto: ready on 127.0.0.1:$port (pid $(<"$pidfile"))"
}

# ---------------------------------------------------------------------------------------------
# PgBouncer (benchmarks only): a pooler in front of the local PostgreSQL, so that the
# many-hosts benchmark can open a new client connection per tenant, as a worker does for a
# host per tenant, without this one server forking a backend for each (on a real fleet that
# cost falls on each tenant's own server, not on the machine that runs tenantry).

# The configuration for PORT, with its files in DIR. Session pooling: a client keeps one
# server connection until it disconnects, which then serves the next client after DISCARD
# ALL. Trust, like the local server. The pool is larger than the bench's `limits.max_pools`
# (64): in session mode every idle pooled client connection holds a server connection.
_pgbouncer_ini() {
    local port=$1 dir=$2
    cat <<INI
[databases]
* = host=127.0.0.1 port=$TENANTRY_PG_PORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = session
max_client_conn = 2000
default_pool_size = 80
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits,options,search_path,statement_timeout,lock_timeout
logfile =
pidfile =
log_connections = 0
log_disconnections = 0
INI
}

ensure_pgbouncer() {
    # Outside the state directory: it runs as postgres, who may not enter $HOME.
    local dir="${TMPDIR:-/tmp}/tenantry-pgbouncer-$(id -u)" port bin
    local pidfile="$dir/pgbouncer.pid" portfile="$dir/pgbouncer.port" logfile="$dir/pgbouncer.log"
    mkdir -p "$dir"
    if _svc_pid_alive "$pidfile" pgbouncer && [[ -s $portfile ]] && _svc_port_open "$(<"$portfile")"; then
        port=$(<"$portfile")
        if [[ $(_pgbouncer_ini "$port" "$dir") == "$(cat "$dir/pgbouncer.ini" 2>/dev/null)" ]]; then
            TENANTRY_PGBOUNCER_PORT=$port
            _svc_log "pgbouncer: ready on 127.0.0.1:$port (pid $(<"$pidfile"))"
            return 0
        fi
        _svc_log "pgbouncer: restarting with a new configuration"
        kill "$(<"$pidfile")" 2>/dev/null || true
        _svc_wait "pgbouncer to stop" "$TENANTRY_WAIT_SECS" bash -c '! _p=$(cat "$1") || ! kill -0 "$_p" 2>/dev/null' _ "$pidfile" || return 1
    fi
    command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || _svc_apt_install pgbouncer || return 1
    bin=$(command -v pgbouncer 2>/dev/null || echo /usr/sbin/pgbouncer)
    port=$(_svc_pick_port "$portfile") || return 1
    _pgbouncer_ini "$port" "$dir" >"$dir/pgbouncer.ini"
    echo '"postgres" ""' >"$dir/users.txt"
    chown -R postgres "$dir" 2>/dev/null || true
    _svc_log "pgbouncer: starting on 127.0.0.1:$port in front of PostgreSQL :$TENANTRY_PG_PORT (log: $logfile)"
    # It refuses to run as root: as postgres, exec'd in place so the pid file names it.
    local as=()
    if [[ $(id -u) -eq 0 ]]; then as=(setpriv --reuid=postgres --regid=postgres --init-groups); fi
    _svc_spawn "$pidfile" "$logfile" "${as[@]}" "$bin" "$dir/pgbouncer.ini" || return 1
    _svc_wait_port pgbouncer "$port" "$pidfile" "$logfile" || return 1
    echo "$port" >"$portfile"
    TENANTRY_PGBOUNCER_PORT=$port
    _svc_log "pgbouncer: ready on 127.0.0.1:$port"
}

# ---------------------------------------------------------------------------------------------

# The objects tests left in the local S3 store: each test writes under a prefix of its own
# (`{name}_{pid}_{n}/`), and one that fails before its cleanup leaves them. s3s-fs walks
# its directory to list, so leftovers slow every later listing. Prefixes older than an hour
# are deleted (a test still running is younger); the demo's prefix is kept.
sweep_s3_test_leftovers() {
    local bucket="$TENANTRY_STATE_DIR/s3/data/$TENANTRY_S3_BUCKET" n
    [[ -d $bucket ]] || return 0
    n=$(find "$bucket" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended \
        -regex '.*/t[a-z_]*_[0-9]+_[0-9]+' -mmin +60 -print -exec rm -rf {} + | wc -l)
    ((n == 0)) || _svc_log "s3s-fs: removed $n test prefixes older than an hour from bucket $TENANTRY_S3_BUCKET"
}

ensure_all() {
    ensure_postgres && ensure_mariadb && ensure_redis && ensure_redis_cluster && ensure_s3 && ensure_moto
}

# Exports the variables the Rust tests read. S3 and RDS ports come from the ensure_s3 /
# ensure_moto calls of this shell, or from their port files.
export_test_env() {
    local s3_port=${TENANTRY_S3_PORT:-} moto_port=${TENANTRY_MOTO_PORT:-}
    [[ -n $s3_port ]] || s3_port=$(cat "$TENANTRY_STATE_DIR/s3/s3s-fs.port" 2>/dev/null || true)
    [[ -n $moto_port ]] || moto_port=$(cat "$TENANTRY_STATE_DIR/moto/moto.port" 2>/dev/null || true)
    export TENANTRY_TEST_PG_URL="postgres://postgres@127.0.0.1:$TENANTRY_PG_PORT/postgres"
    export TENANTRY_TEST_MYSQL_URL="mysql://root@127.0.0.1:$TENANTRY_MYSQL_PORT/mysql"
    export TENANTRY_TEST_REDIS_URL="redis://127.0.0.1:$TENANTRY_REDIS_PORT"
    local port nodes=()
    for port in $(_redis_cluster_ports); do nodes+=("redis://127.0.0.1:$port"); done
    TENANTRY_TEST_REDIS_CLUSTER=$(
        IFS=,
        echo "${nodes[*]}"
    )
    export TENANTRY_TEST_REDIS_CLUSTER
    export TENANTRY_TEST_S3_ACCESS_KEY=$TENANTRY_S3_ACCESS_KEY
    export TENANTRY_TEST_S3_SECRET_KEY=$TENANTRY_S3_SECRET_KEY
    export TENANTRY_TEST_S3_BUCKET=$TENANTRY_S3_BUCKET
    # The binary, for tests that run an S3 server of their own and stop it.
    TENANTRY_TEST_S3S_FS=$(_s3s_fs_bin || true)
    export TENANTRY_TEST_S3S_FS
    if [[ -n $s3_port ]]; then
        export TENANTRY_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
    else
        _svc_err "export_test_env: s3s-fs port unknown (run ensure_s3 first); TENANTRY_TEST_S3_ENDPOINT not set"
    fi
    if [[ -n $moto_port ]]; then
        export TENANTRY_TEST_RDS_ENDPOINT="http://127.0.0.1:$moto_port"
    else
        _svc_err "export_test_env: moto port unknown (run ensure_moto first); TENANTRY_TEST_RDS_ENDPOINT not set"
    fi
}

print_test_env() {
    local v
    for v in TENANTRY_TEST_PG_URL TENANTRY_TEST_MYSQL_URL TENANTRY_TEST_REDIS_URL TENANTRY_TEST_REDIS_CLUSTER \
        TENANTRY_TEST_S3_ENDPOINT TENANTRY_TEST_S3_ACCESS_KEY TENANTRY_TEST_S3_SECRET_KEY \
        TENANTRY_TEST_S3_BUCKET TENANTRY_TEST_S3S_FS TENANTRY_TEST_RDS_ENDPOINT CARGO_TARGET_DIR; do
        [[ -n ${!v:-} ]] && printf 'export %s=%q\n' "$v" "${!v}"
    done
    return 0
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    if [[ $# -eq 0 ]]; then
        set -- ensure_all
    fi
    for _fn in "$@"; do
        "$_fn"
    done
    export_test_env
    print_test_env
fi
