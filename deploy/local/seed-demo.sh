#!/usr/bin/env bash
# Seeds the demo fleet into the local PostgreSQL (postgres://postgres@127.0.0.1:5432):
#
#   tenantry_demo_system              the catalog: table `tenants`, 200 tenants
#   tenantry_demo_{tenant}_core       service core (database per tenant): the first 20 tenants
#   tenantry_demo_clinic              service clinic (schema `tenant_{tenant}` per tenant): all 200
#   tenantry_demo_events              service events (row isolation, schema public): the first 50
#
# Each target gets its baseline migration from migrations/ and a row for it in its
# `tenantry_migrations` history table (state 'applied', run_id 'demo-seed'), then data spread
# over the past ~18 months. Random data is seeded (setseed), so every run produces the same rows
# (timestamps are relative to the day of the run).
# The first five core tenants also get a duplicate index and dead tuples (payments, with
# autovacuum off) for the nightly vacuum and index analysis to find; audit logs reach back
# past every tenant's retention_days label, for the nightly purge.
#
# Usage: seed-demo.sh [--if-missing | --drop]
#   (default)      drop every database named tenantry_demo_* and rebuild the fleet
#   --if-missing   keep an existing, complete fleet seeded by this same script and migrations
#   --drop         drop the demo databases and stop
#
# Needs PostgreSQL running (deploy/local/services.sh ensure_postgres) and psql.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

mode=rebuild
case "${1:-}" in
    "") ;;
    --if-missing) mode=if-missing ;;
    --drop) mode=drop ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "seed-demo.sh: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
esac

export PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres PGDATABASE=postgres PGCONNECT_TIMEOUT=10
unset PGPASSWORD PGSERVICE
export PGOPTIONS="-c client_min_messages=warning"
PSQL=(psql -X -w -q -v ON_ERROR_STOP=1)

say() { printf '  -> %s\n' "$*" >&2; }

core_migration="$root/migrations/core/0001_initial.sql"
clinic_migration="$root/migrations/clinic/V1__initial.sql"
events_migration="$root/migrations/events/20250101000000_initial/migration.sql"
for f in "$core_migration" "$clinic_migration" "$events_migration"; do
    [[ -f $f ]] || {
        echo "seed-demo.sh: missing migration $f" >&2
        exit 1
    }
done
sha() { sha256sum "$1" | cut -d' ' -f1; }
core_sha=$(sha "$core_migration")
clinic_sha=$(sha "$clinic_migration")
events_sha=$(sha "$events_migration")
fingerprint=$(cat "$0" "$core_migration" "$clinic_migration" "$events_migration" | sha256sum | cut -d' ' -f1)

psql_ok() { "${PSQL[@]}" -Atc 'select 1' >/dev/null 2>&1; }
if ! psql_ok; then
    echo "seed-demo.sh: cannot connect: \`psql -h 127.0.0.1 -p 5432 -U postgres -c 'select 1'\` failed" >&2
    echo "  start PostgreSQL first: bash deploy/local/services.sh ensure_postgres" >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# The tenants. The first 20 use core, clinic and events; 21-50 clinic and events; the rest
# clinic only. Suspended and archived tenants are all beyond the first 50.

insurers=(acme-insurance globex-mutual initech-assurance umbrella-life stark-underwriters
    wayne-casualty hooli-cover vandelay-risk soylent-health-plan cyberdyne-insure tyrell-mutual
    wonka-protect oscorp-indemnity aperture-life massive-dynamic nakatomi-assurance
    gringotts-mutual duff-casualty pied-piper-cover 24h-insure)
providers=(northwind-health contoso-clinics fabrikam-care st_marys-health riverside-medical
    lakeside-dental oakwood-pediatrics summit-physio harbor-eye-care maple-family-practice
    bluebird-vet cedar-orthopedics pinecrest-dermatology silverline-labs brightsmile-dental
    greenfield-gp meadowbrook-clinic redwood-urgent-care sunrise-womens-health
    clearwater-cardiology evergreen-rehab highland-sports-med ivy-lane-surgery
    juniper-psychology kingsbridge-ent lighthouse-oncology mountainview-allergy
    northstar-imaging orchard-hearing parkside-podiatry)
cities=(Lyon Porto Austin Denver Ghent Leeds Graz Turin Boise Omaha Malmo Tampa Bergen Cork Reno)
declare -A status_of=([clinic-063]=suspended [clinic-088]=suspended [clinic-121]=suspended
    [clinic-164]=suspended [clinic-097]=archived [clinic-142]=archived [clinic-187]=archived)

ids=() names=()
for t in "${insurers[@]}" "${providers[@]}"; do
    ids+=("$t")
    # Display name: "acme-insurance" -> "Acme Insurance", "st_marys-health" -> "St Marys Health".
    names+=("$(sed -E 's/[-_]/ /g; s/\b(.)/\u\1/g' <<<"$t")")
done
for ((i = 51; i <= 200; i++)); do
    ids+=("$(printf 'clinic-%03d' "$i")")
    names+=("$(printf 'Clinic %03d (%s)' "$i" "${cities[i % ${#cities[@]}]}")")
done
((${#ids[@]} == 200)) || {
    echo "seed-demo.sh: expected 200 tenants, have ${#ids[@]}" >&2
    exit 1
}
for t in "${ids[@]}"; do
    [[ $t =~ ^[a-z0-9][a-z0-9_-]{0,62}$ ]] || {
        echo "seed-demo.sh: bad tenant id $t" >&2
        exit 1
    }
    ((${#t} + 19 <= 63)) || {
        echo "seed-demo.sh: tenant id too long for a database name: $t" >&2
        exit 1
    }
done
core_ids=("${ids[@]:0:20}")
events_ids=("${ids[@]:0:50}")

# ---------------------------------------------------------------------------------------------

start=$SECONDS

if [[ $mode == if-missing ]]; then
    have=$("${PSQL[@]}" -d tenantry_demo_system -Atc "select value from seed_info where key = 'fingerprint'" 2>/dev/null || true)
    if [[ $have == "$fingerprint" ]]; then
        ndb=$("${PSQL[@]}" -Atc "select count(*) from pg_database where datname like 'tenantry\_demo\_%\_core'")
        nschema=$("${PSQL[@]}" -d tenantry_demo_clinic -Atc "select count(*) from pg_namespace where nspname like 'tenant\_%'" 2>/dev/null || echo 0)
        nevents=$("${PSQL[@]}" -d tenantry_demo_events -Atc "select count(*) from tenantry_migrations" 2>/dev/null || echo 0)
        if [[ $ndb == 20 && $nschema == 200 && $nevents == 1 ]]; then
            say "demo fleet already seeded (same seed script and migrations): kept"
            exit 0
        fi
    fi
    say "demo fleet missing, incomplete or outdated: rebuilding"
fi

if [[ $mode == drop ]]; then
    say "dropping the databases tenantry_demo_*"
    "${PSQL[@]}" <<'SQL'
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', datname)
FROM pg_database WHERE datname LIKE 'tenantry\_demo\_%' ORDER BY datname
\gexec
SQL
    say "done"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The databases of the fleet. Existing ones are emptied and reused rather than dropped and
# created again: DROP DATABASE costs a checkpoint each, seconds apiece.
databases=(tenantry_demo_system tenantry_demo_clinic tenantry_demo_events)
for t in "${core_ids[@]}"; do databases+=("tenantry_demo_${t}_core"); done
say "preparing the databases (${#databases[@]})"
{
    echo "CREATE TEMP TABLE wanted (datname text PRIMARY KEY);"
    for d in "${databases[@]}"; do printf "INSERT INTO wanted VALUES ('%s');\n" "$d"; done
    cat <<'SQL'
-- Sessions still connected to the demo databases (a running tenantry, a psql) would block
-- the reset.
SELECT count(pg_terminate_backend(pid)) AS terminated FROM pg_stat_activity
WHERE datname LIKE 'tenantry\_demo\_%' AND pid <> pg_backend_pid() \gset
SELECT format('DROP DATABASE %I WITH (FORCE)', datname) FROM pg_database
WHERE datname LIKE 'tenantry\_demo\_%' AND datname NOT IN (SELECT datname FROM wanted) ORDER BY 1
\gexec
SELECT format('CREATE DATABASE %I', datname) FROM wanted
WHERE datname NOT IN (SELECT datname FROM pg_database) ORDER BY 1
\gexec
SQL
} >"$work/databases.sql"
"${PSQL[@]}" -f "$work/databases.sql"

# SQL that empties the current database: drops every schema but the system ones, creates a new
# `public` schema like the one of a new database, and vacuums.
reset_database() {
    cat <<'SQL'
SELECT format('DROP SCHEMA %I CASCADE', nspname) FROM pg_namespace
WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema' ORDER BY 1
\gexec
CREATE SCHEMA public AUTHORIZATION pg_database_owner;
GRANT USAGE ON SCHEMA public TO PUBLIC;
COMMENT ON SCHEMA public IS 'standard public schema';
-- Makes the space of the dropped objects reusable, so that runs do not grow the catalogs.
VACUUM;
SQL
}

# SQL literal of a bash string (the ids and names here contain no quotes, but be safe).
lit() { printf "'%s'" "${1//\'/\'\'}"; }

# The history table, exactly as tenantry reads it.
history_ddl="CREATE TABLE IF NOT EXISTS tenantry_migrations (
  version      text PRIMARY KEY,
  name         text NOT NULL,
  checksum     text NOT NULL,
  state        text NOT NULL,
  started_at   timestamptz NOT NULL DEFAULT now(),
  finished_at  timestamptz,
  duration_ms  bigint,
  run_id       text
);"

# apply_baseline FILE VERSION NAME CHECKSUM: SQL that runs FILE and records it, in the current
# transaction, database and search_path.
apply_baseline() {
    cat <<SQL
SELECT clock_timestamp() AS t0 \\gset
\\i $(lit "$1")
$history_ddl
INSERT INTO tenantry_migrations (version, name, checksum, state, started_at, finished_at, duration_ms, run_id)
VALUES ($(lit "$2"), $(lit "$3"), $(lit "$4"), 'applied', :'t0', clock_timestamp(),
        round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000)::bigint, 'demo-seed')
ON CONFLICT (version) DO NOTHING;
SQL
}

first_names="ARRAY['Emma','Liam','Olivia','Noah','Ava','Lucas','Mia','Elias','Sofia','Mateo','Lea','Hugo','Chloe','Jonas','Nora','Adam','Ines','Leo','Zoe','Omar','Ana','Felix','Maya','Theo','Clara','Ivan','Lina','Oscar','Ella','Yusuf']"
last_names="ARRAY['Martin','Smith','Garcia','Muller','Rossi','Dubois','Jansen','Nowak','Silva','Novak','Berg','Kowalski','Moreau','Fischer','Lopez','Brown','Costa','Weber','Haddad','Ivanova','Peeters','Larsen','Romano','Schmidt','Nguyen','Kim','Patel','Okafor','Sato','Wilson']"

# --- system database: the catalog ------------------------------------------------------------
{
    echo '\connect tenantry_demo_system'
    reset_database
    cat <<'SQL'
CREATE TABLE tenants (
  id       text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  name     text NOT NULL,
  status   text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'archived')),
  labels   jsonb NOT NULL DEFAULT '{}',
  services text[] NOT NULL
);
CREATE TABLE seed_info (key text PRIMARY KEY, value text NOT NULL);  -- filled when all parts are done
INSERT INTO tenants (id, name, status, labels, services) VALUES
SQL
    for ((i = 0; i < 200; i++)); do
        n=$((i + 1)) t=${ids[i]}
        if ((n <= 20)); then
            tier=$([[ $((n % 3)) == 0 ]] && echo standard || echo enterprise)
            services="{core,clinic,events}"
        elif ((n <= 50)); then
            tier=$([[ $((n % 7)) == 0 ]] && echo enterprise || echo standard)
            services="{clinic,events}"
        else
            tier=$([[ $((n % 3)) == 0 ]] && echo free || echo standard)
            services="{clinic}"
        fi
        region=$([[ $((n % 5)) -lt 2 ]] && echo us || echo eu)
        case $tier in enterprise) retention=365 ;; standard) retention=90 ;; *) retention=30 ;; esac
        status=${status_of[$t]:-active}
        # Two canaries for staged rollouts (workflows/rollout.toml): one with every service, one clinic-only.
        ring=$([[ $n == 1 || $n == 51 ]] && echo ', "ring": "canary"' || true)
        sep=$([[ $n == 200 ]] && echo ";" || echo ",")
        printf "  (%s, %s, '%s', '{\"tier\": \"%s\", \"region\": \"%s\", \"retention_days\": \"%s\"%s}', '%s')%s\n" \
            "$(lit "$t")" "$(lit "${names[i]}")" "$status" "$tier" "$region" "$retention" "$ring" "$services" "$sep"
    done
} >"$work/system.sql"

# --- core: one database per tenant -----------------------------------------------------------
{
    i=0
    for t in "${core_ids[@]}"; do
        i=$((i + 1))
        code=$(tr -d '_-' <<<"$t" | cut -c1-4 | tr '[:lower:]' '[:upper:]')
        printf '\\connect "tenantry_demo_%s_core"\n' "$t"
        reset_database
        echo "SELECT setseed($i / 1000.0);"
        echo "BEGIN;"
        apply_baseline "$core_migration" 1 initial "$core_sha"
        cat <<SQL
INSERT INTO policies (number, holder, premium_cents, starts_on, created_at)
SELECT format('$code-%s', lpad(g::text, 6, '0')),
       ($first_names)[1 + floor(random() * 30)::int] || ' ' || ($last_names)[1 + floor(random() * 30)::int],
       (24000 + floor(random() * 360000))::bigint,
       d::date,
       d - random() * interval '10 days'
FROM (SELECT g, now() - random() * interval '548 days' AS d FROM generate_series(1, 500) g) s;

INSERT INTO claims (policy_id, amount_cents, status, filed_at)
SELECT id, amount,
       CASE WHEN filed_at > now() - interval '21 days' THEN (ARRAY['open','open','in_review'])[1 + floor(random() * 3)::int]
            ELSE (ARRAY['approved','paid','paid','paid','rejected','in_review'])[1 + floor(random() * 6)::int] END,
       filed_at
FROM (SELECT p.id, (5000 + floor(random() * random() * 5000000))::bigint AS amount,
             p.starts_on::timestamptz + (now() - p.starts_on::timestamptz) * random() AS filed_at
      FROM (SELECT (SELECT min(id) FROM policies) + floor(random() * 500)::bigint AS pid
            FROM generate_series(1, 300)) r
      JOIN policies p ON p.id = r.pid) c;

INSERT INTO payments (policy_id, amount_cents, paid_at)
SELECT p.id, round(p.premium_cents / 12.0)::bigint,
       p.starts_on::timestamptz + (now() - p.starts_on::timestamptz) * random()
FROM (SELECT (SELECT min(id) FROM policies) + floor(random() * 500)::bigint AS pid
      FROM generate_series(1, 800)) r
JOIN policies p ON p.id = r.pid;
COMMIT;
SQL
        # Work for the nightly maintenance in the first five tenants: a hand-made copy of
        # payments_paid_at_idx (analyze_indexes reports the duplicate), and half of payments
        # deleted with autovacuum off there, so the dead tuples wait for tenantry's vacuum.
        if ((i <= 5)); then
            cat <<SQL
CREATE INDEX payments_paid_at_copy ON payments (paid_at);
ALTER TABLE payments SET (autovacuum_enabled = false);
DELETE FROM payments WHERE id % 2 = 0;
SQL
        fi
    done
} >"$work/core.sql"

# --- clinic: one schema per tenant in a shared database --------------------------------------
{
    echo '\connect tenantry_demo_clinic'
    reset_database
    i=0
    for t in "${ids[@]}"; do
        i=$((i + 1))
        echo "SELECT setseed($i / 1000.0);"
        echo "BEGIN;"
        printf 'CREATE SCHEMA "tenant_%s";\n' "$t"
        printf 'SET search_path TO "tenant_%s";\n' "$t"
        apply_baseline "$clinic_migration" 1 initial "$clinic_sha"
        cat <<SQL
INSERT INTO patients (full_name, born_on, email, phone, created_at)
SELECT first || ' ' || last,
       date '1940-01-01' + floor(random() * 30000)::int,
       lower(first || '.' || last || g) || '@example.com',
       '+1-555-' || lpad(floor(random() * 10000)::int::text, 4, '0'),
       now() - random() * interval '548 days'
FROM (SELECT g, ($first_names)[1 + floor(random() * 30)::int] AS first,
             ($last_names)[1 + floor(random() * 30)::int] AS last
      FROM generate_series(1, 50) g) s;

INSERT INTO appointments (patient_id, starts_at, duration_minutes, kind, status)
SELECT pid, starts_at, (ARRAY[15, 30, 30, 45, 60])[1 + floor(random() * 5)::int],
       (ARRAY['checkup','follow-up','consultation','vaccination','lab','imaging'])[1 + floor(random() * 6)::int],
       CASE WHEN starts_at > now() THEN 'scheduled'
            ELSE (ARRAY['completed','completed','completed','completed','no_show','cancelled'])[1 + floor(random() * 6)::int] END
FROM (SELECT (SELECT min(id) FROM patients) + floor(random() * 50)::bigint AS pid,
             date_trunc('hour', now() - random() * interval '548 days' + interval '30 days')
               + (floor(random() * 4) * interval '15 minutes') AS starts_at
      FROM generate_series(1, 150)) s;

INSERT INTO invoices (patient_id, appointment_id, amount_cents, issued_at, paid_at)
SELECT patient_id, id, amount, issued_at,
       CASE WHEN random() < 0.85 THEN issued_at + random() * interval '30 days' END
FROM (SELECT a.patient_id, a.id, (4000 + floor(random() * 36000))::bigint AS amount,
             a.starts_at + interval '2 hours' AS issued_at
      FROM appointments a WHERE a.starts_at < now()
      ORDER BY random() LIMIT 100) s;
COMMIT;
SQL
    done
} >"$work/clinic.sql"

# --- events: shared tables, row isolation ----------------------------------------------------
{
    echo '\connect tenantry_demo_events'
    reset_database
    echo "SELECT setseed(0.5);"
    echo "BEGIN;"
    apply_baseline "$events_migration" 20250101000000 initial "$events_sha"
    printf "CREATE TEMP TABLE demo_tenants (tenant_id text NOT NULL) ON COMMIT DROP;\n"
    values=()
    for t in "${events_ids[@]}"; do values+=("($(lit "$t"))"); done
    (IFS=,; echo "INSERT INTO demo_tenants VALUES ${values[*]};")
    cat <<'SQL'
INSERT INTO events (tenant_id, kind, payload, occurred_at)
SELECT t.tenant_id, e.kind,
       jsonb_build_object('user_id', e.user_id, 'source', e.source),
       e.occurred_at
FROM demo_tenants t
CROSS JOIN LATERAL (
  SELECT (ARRAY['user.login','user.login','user.login','record.viewed','record.viewed','record.updated',
                'document.uploaded','invoice.sent','payment.received','user.invited','export.requested'])
           [1 + floor(random() * 11)::int] AS kind,
         1 + floor(random() * 40)::int AS user_id,
         (ARRAY['web','web','mobile','api'])[1 + floor(random() * 4)::int] AS source,
         now() - power(random(), 1.5) * interval '548 days' AS occurred_at,
         g
  FROM generate_series(1, 2000) g
  WHERE t.tenant_id IS NOT NULL
) e
ORDER BY e.occurred_at;

INSERT INTO audit_log (tenant_id, actor, action, at)
SELECT t.tenant_id, a.actor, a.action, a.at
FROM demo_tenants t
CROSS JOIN LATERAL (
  SELECT 'admin' || (1 + floor(random() * 3)::int) || '@' || t.tenant_id || '.example' AS actor,
         (ARRAY['user.invite','user.remove','role.grant','role.revoke','settings.update','export.create','api_key.rotate'])
           [1 + floor(random() * 7)::int] AS action,
         now() - random() * interval '548 days' AS at
  FROM generate_series(1, 100) g
  WHERE t.tenant_id IS NOT NULL
) a
ORDER BY a.at;
COMMIT;
ANALYZE events;
ANALYZE audit_log;
SQL
} >"$work/events.sql"

# --- run: the four scripts in parallel, one psql session each --------------------------------
say "seeding: catalog (200 tenants), core (20 databases), clinic (200 schemas), events (50 tenants)"
pids=() parts=(system core clinic events)
for part in "${parts[@]}"; do
    (
        t0=$SECONDS
        rc=0
        "${PSQL[@]}" -f "$work/$part.sql" >"$work/$part.log" 2>&1 || rc=$?
        echo "$part $((SECONDS - t0))s" >"$work/$part.secs"
        exit "$rc"
    ) &
    pids+=($!)
done
failed=0
for k in "${!parts[@]}"; do
    if ! wait "${pids[k]}"; then
        echo "seed-demo.sh: seeding ${parts[k]} failed:" >&2
        tail -n 20 "$work/${parts[k]}.log" >&2
        failed=1
    fi
done
if ((failed)); then
    exit 1
fi

"${PSQL[@]}" -d tenantry_demo_system -c "INSERT INTO seed_info VALUES ('fingerprint', '$fingerprint'), ('seeded_at', now()::text)"

# --- summary ---------------------------------------------------------------------------------
q() { "${PSQL[@]}" -d "$1" -Atc "$2"; }
n_tenants=$(q tenantry_demo_system "select count(*) || ' tenants (' || count(*) filter (where status = 'active') || ' active, ' || count(*) filter (where status = 'suspended') || ' suspended, ' || count(*) filter (where status = 'archived') || ' archived)' from tenants")
n_core=$(q postgres "select count(*) from pg_database where datname like 'tenantry\_demo\_%\_core'")
n_schemas=$(q tenantry_demo_clinic "select count(*) from pg_namespace where nspname like 'tenant\_%'")
n_events=$(q tenantry_demo_events "select count(distinct tenant_id) || ' tenants, ' || count(*) || ' events' from events")
size=$(q postgres "select pg_size_pretty(sum(pg_database_size(datname))) from pg_database where datname like 'tenantry\_demo\_%'")
say "catalog: $n_tenants in tenantry_demo_system.tenants"
say "core:    $n_core databases tenantry_demo_{tenant}_core"
say "clinic:  $n_schemas schemas tenant_{tenant} in tenantry_demo_clinic"
say "events:  $n_events in tenantry_demo_events"
say "seeded in $((SECONDS - start))s ($(cat "$work"/{system,core,clinic,events}.secs | paste -sd, | sed 's/,/, /g'); $size on disk)"
