//! Backup retention and freshness: `prune_backups` through real runs on a real S3 server (s3s-fs) and a directory store, and `tenantry backups` (listing, `--stale`, `--json`).
//!
//! The histories are written straight into the store (not by tenantry), with folder names
//! stamped relative to now, and the expected outcome is computed here with code of its own.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use futures::StreamExt;
use support::store::{s3, s3_clear, s3_env, s3_keys, s3_put, s3_storage_config};
use support::{WorkerProcess, clear_redis, pg_url, redis_url, tenantry, unique, wait_for_state};

/// A fleet of tenants of one service, `app`, whose backups live in `storage` ("s3": the
/// test's own prefix in the local s3s-fs bucket; "fs": `backups/` in the test's directory).
/// Pruning touches only the object store, so no tenant database is created.
struct Fleet {
    name: String,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new(storage: &str, tenants: &[(&str, &str)]) -> Fleet {
        let name = unique("tprune");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        let storage = match storage {
            "s3" => s3_storage_config(&name),
            _ => "[storage]\nkind = \"fs\"\npath = \"backups\"\n".to_string(),
        };
        let mut config = format!(
            r#"
[redis]
url = "{redis}"
prefix = "{name}"

[runtime]
lease = "3s"
sweep_interval = "200ms"

{storage}

[hosts.main]
engine = "postgres"
url = "{pg}"

[services.app]
engine = "postgres"
isolation = "database"
host = "main"
database = "{name}_app_{{tenant}}"
"#,
            redis = redis_url(),
            pg = pg_url()
        );
        for (id, status) in tenants {
            config.push_str(&format!(
                "\n[[catalog.tenants]]\nid = \"{id}\"\nstatus = \"{status}\"\nservices = [\"app\"]\n"
            ));
        }
        std::fs::write(dir.path().join("tenantry.toml"), config).unwrap();
        Fleet { name, dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn workflow(&self, name: &str, text: &str) {
        std::fs::write(self.path().join(format!("workflows/{name}.toml")), text).unwrap();
    }

    /// Runs `workflow` to its end; the run's id and its status.
    fn run_and_wait(&self, workflow: &str) -> (String, serde_json::Value) {
        let out = tenantry(self.path(), &["run", workflow], &[]);
        assert_eq!(out.code(), 0, "{}", out.all());
        let run = out.stdout().trim().to_string();
        let s = wait_for_state(self.path(), &run, &["succeeded", "failed", "cancelled"], Duration::from_secs(90));
        assert_eq!(s["run"]["state"], "succeeded", "{s:#}");
        (run, s)
    }
}

/// A workflow whose only step prunes with the nightly policy (7 last, 14 daily, 8 weekly,
/// 12 monthly) in Europe/Berlin.
fn prune_workflow(extra: &str) -> String {
    format!(
        "timezone = \"Europe/Berlin\"\n\n[[steps]]\nkind = \"prune_backups\"\nkeep_last = 7\nkeep_daily = 14\nkeep_weekly = 8\nkeep_monthly = 12\n{extra}"
    )
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// A backup folder's name as `backup` makes it: the run's UTC time, then the run id (which
/// starts with that time).
fn folder_name(t: DateTime<Utc>, suffix: &str) -> String {
    format!("{}_{}-{suffix}", stamp(t), t.format("%Y%m%d-%H%M%S"))
}

fn verdict_name(at: DateTime<Utc>, passed: bool) -> String {
    format!("verify-{}_{}-v-{}.json", stamp(at), at.format("%Y%m%d-%H%M%S"), if passed { "passed" } else { "failed" })
}

/// Every key under `prefix`, as a set.
async fn keys(client: &aws_sdk_s3::Client, prefix: &str) -> BTreeSet<String> {
    s3_keys(client, prefix).await.into_iter().collect()
}

/// Writes many small objects, 16 at a time.
async fn s3_put_all(client: &aws_sdk_s3::Client, objects: Vec<(String, Vec<u8>)>) {
    futures::stream::iter(objects)
        .for_each_concurrent(16, |(key, body)| async move { s3_put(client, &key, body).await })
        .await;
}

/// The folders (`{service}/{tenant}/{name}`) that the objects under `prefix` are in.
fn folders_of<'k>(keys: impl IntoIterator<Item = &'k String>, prefix: &str) -> BTreeSet<String> {
    keys.into_iter()
        .filter_map(|k| k.strip_prefix(prefix).and_then(|rest| rest.rsplit_once('/')).map(|(f, _)| f.to_string()))
        .collect()
}

/// The folders named in an output list (`kept`, `deleted`, `would_delete`).
fn listed(output: &serde_json::Value, list: &str) -> BTreeSet<String> {
    output[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {output:#}"))
        .iter()
        .map(|e| e["folder"].as_str().unwrap().to_string())
        .collect()
}

/// Fails with what is missing and what is extra (sets of hundreds of keys are unreadable
/// in full).
#[track_caller]
fn assert_same(actual: &BTreeSet<String>, expected: &BTreeSet<String>, what: &str) {
    let missing: Vec<&String> = expected.difference(actual).collect();
    let extra: Vec<&String> = actual.difference(expected).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{what}: missing {missing:#?}\nunexpected {extra:#?}");
}

/// What the nightly policy keeps of complete backups taken at the given times, computed
/// without tenantry's code: per rule, the newest backup of each period (a map from the
/// period to the newest backup in it), then the most recent N periods.
fn expected_keeps(backups: &[(String, DateTime<Utc>)], zone: chrono_tz::Tz) -> BTreeSet<String> {
    let (last, daily, weekly, monthly) = (7, 14, 8, 12);
    let mut by_time: Vec<&(String, DateTime<Utc>)> = backups.iter().collect();
    by_time.sort_by_key(|(f, t)| (*t, f.clone()));
    let mut keep: BTreeSet<String> = by_time.iter().rev().take(last).map(|(f, _)| f.clone()).collect();
    let mut newest_per = |period: &dyn Fn(DateTime<chrono_tz::Tz>) -> String, n: usize| {
        let mut newest: BTreeMap<String, &(String, DateTime<Utc>)> = BTreeMap::new();
        for b in &by_time {
            // Oldest to newest: the last one written into a period is its newest.
            newest.insert(period(b.1.with_timezone(&zone)), *b);
        }
        for (_, (f, _)) in newest.iter().rev().take(n) {
            keep.insert(f.clone());
        }
    };
    newest_per(&|t| t.format("%Y-%m-%d").to_string(), daily);
    newest_per(&|t| format!("{}-W{:02}", t.iso_week().year(), t.iso_week().week()), weekly);
    newest_per(&|t| t.format("%Y-%m").to_string(), monthly);
    keep
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_exactly_the_objects_the_policy_says_on_a_two_year_history() {
    let fleet = Fleet::new("s3", &[("acme", "active")]);
    fleet.workflow("prune-dry", &prune_workflow("dry_run = true\n"));
    fleet.workflow("prune", &prune_workflow(""));
    let client = s3().await;
    let root = format!("{}/", fleet.name);
    let tenant = "app/acme";
    let now = Utc::now();
    let zone = chrono_tz::Europe::Berlin;

    // Two years of nightly backups at 01:00 UTC (02:00 or 03:00 in Berlin). Every 11th day
    // has none (a failed night); every 7th has a second, named-step backup at 23:30 UTC,
    // which is already the next day in Berlin (and on Sundays the next ISO week, on the
    // last of a month the next month).
    let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
    let mut complete: Vec<(String, DateTime<Utc>)> = Vec::new();
    for d in 1..=730i64 {
        let day = (now - TimeDelta::days(d)).date_naive();
        let mut times = Vec::new();
        if d % 11 != 5 {
            times.push((day.and_hms_opt(1, 0, 0).unwrap().and_utc(), format!("{d:06x}")));
        }
        if d % 7 == 3 {
            times.push((day.and_hms_opt(23, 30, 0).unwrap().and_utc(), format!("{d:06x}_before-migrate")));
        }
        for (t, suffix) in times {
            let folder = format!("{tenant}/{}", folder_name(t, &suffix));
            objects.push((format!("{root}{folder}/dump-{suffix}.pgdump"), format!("dump of day {d}").into_bytes()));
            objects.push((format!("{root}{folder}/manifest.json"), b"{\"format\": 1}".to_vec()));
            complete.push((folder, t));
        }
    }
    let folder_at = |d: i64| {
        let t = (now - TimeDelta::days(d)).date_naive().and_hms_opt(1, 0, 0).unwrap().and_utc();
        format!("{tenant}/{}", folder_name(t, &format!("{d:06x}")))
    };
    // Day 501 passed a verification: the newest verified backup, far outside the policy.
    // Day 450 passed one, then failed a later one: not verified any more. Day 3 failed.
    let verdicts = [(501, 500, true), (450, 449, true), (450, 300, false), (3, 2, false)];
    for (d, at, passed) in verdicts {
        assert!(complete.iter().any(|(f, _)| *f == folder_at(d)), "day {d} has no backup to verify");
        let at = now - TimeDelta::days(at);
        objects.push((format!("{root}{}/{}", folder_at(d), verdict_name(at, passed)), b"{}".to_vec()));
    }
    // Folders without a manifest, both written just now: a backup of a run an hour old, and
    // a retry of a three-day-old run about to commit. Neither may go.
    let fresh = format!("{tenant}/{}", folder_name(now - TimeDelta::hours(1), "fresh"));
    let retried = format!("{tenant}/{}", folder_name(now - TimeDelta::days(3), "retried"));
    objects.push((format!("{root}{fresh}/dump-a.pgdump"), b"partial".to_vec()));
    objects.push((format!("{root}{retried}/dump-b.pgdump"), b"partial".to_vec()));
    // Another tenant whose id starts with this one's: out of reach.
    let other = format!("app/acmex/{}", folder_name(now - TimeDelta::days(600), "x"));
    objects.push((format!("{root}{other}/manifest.json"), b"{}".to_vec()));
    let written: BTreeSet<String> = objects.iter().map(|(k, _)| k.clone()).collect();
    s3_put_all(&client, objects).await;
    assert_same(&keys(&client, &root).await, &written, "objects written");

    let mut keep = expected_keeps(&complete, zone);
    keep.insert(folder_at(501));
    keep.insert(fresh.clone());
    keep.insert(retried.clone());
    let all: BTreeSet<String> =
        folders_of(&written, &root).into_iter().filter(|f| f.starts_with("app/acme/")).collect();
    let gone: BTreeSet<String> = all.difference(&keep).cloned().collect();
    assert!(!keep.contains(&folder_at(450)) && gone.contains(&folder_at(450)));
    assert!(keep.len() > 30 && gone.len() > 600, "{} kept, {} gone", keep.len(), gone.len());

    let _worker = WorkerProcess::spawn(fleet.path());

    // The dry run deletes nothing and names exactly what the real run deletes.
    let (_, s) = fleet.run_and_wait("prune-dry");
    let dry = &s["tenants"]["acme"]["outputs"]["prune_backups/app"];
    assert_eq!(dry["dry_run"], true, "{dry:#}");
    assert_eq!(dry["timezone"], "Europe/Berlin");
    assert_same(&listed(dry, "would_delete"), &gone, "the dry run's would_delete");
    assert_same(&listed(dry, "kept"), &keep, "the dry run's kept");
    assert!(dry.get("deleted").is_none() && dry.get("aborted_uploads").is_none(), "{dry:#}");
    assert_same(&keys(&client, &root).await, &written, "objects after the dry run");
    let why = |output: &serde_json::Value, folder: &str| -> Vec<String> {
        let entry = output["kept"].as_array().unwrap().iter().find(|k| k["folder"] == folder).unwrap().clone();
        entry["why"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(why(dry, &folder_at(501)), ["newest_verified"]);
    assert_eq!(why(dry, &fresh), ["in_progress"]);
    assert_eq!(why(dry, &retried), ["in_progress"]);

    let (_, s) = fleet.run_and_wait("prune");
    let out = &s["tenants"]["acme"]["outputs"]["prune_backups/app"];
    assert_same(&listed(out, "deleted"), &gone, "deleted");
    assert_same(&listed(out, "kept"), &keep, "kept");
    assert_eq!(out["backups"], complete.len());
    // Exactly the kept folders' objects remain, every one of them; the other tenant's too.
    let expected: BTreeSet<String> = written
        .iter()
        .filter(|k| {
            let folder = k.strip_prefix(&root).unwrap().rsplit_once('/').unwrap().0;
            keep.contains(folder) || folder == other
        })
        .cloned()
        .collect();
    assert_same(&keys(&client, &root).await, &expected, "objects after pruning");
    let freed: u64 = out["deleted"].as_array().unwrap().iter().map(|d| d["bytes"].as_u64().unwrap()).sum();
    assert_eq!(out["freed_bytes"], freed);

    // Planning again on what is left changes nothing: retries and the next night agree.
    let (_, s) = fleet.run_and_wait("prune");
    let again = &s["tenants"]["acme"]["outputs"]["prune_backups/app"];
    assert_eq!(listed(again, "deleted"), BTreeSet::new(), "{again:#}");
    assert_same(&listed(again, "kept"), &keep, "kept the second time");
    assert_same(&keys(&client, &root).await, &expected, "objects after pruning again");

    s3_clear(&client, &root).await;
    clear_redis(&fleet.name).await;
}

/// Sets a file's modification time `ago` in the past.
fn age_file(path: &Path, ago: Duration) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - ago).unwrap();
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn leftovers_older_than_a_day_go_and_the_newest_verified_backup_stays_on_a_directory_store() {
    let fleet = Fleet::new("fs", &[("acme", "active")]);
    fleet.workflow(
        "prune",
        "[[steps]]\nkind = \"prune_backups\"\nkeep_last = 2\n", // UTC, the last two only
    );
    let store = fleet.path().join("backups");
    let tenant = store.join("app/acme");
    let now = Utc::now();
    let day = Duration::from_secs(86_400);
    let at = |d: i64| now - TimeDelta::days(d);
    // Ten nightly backups; the one of 8 days ago is the newest that passed verification.
    for d in 1..=10 {
        let folder = tenant.join(folder_name(at(d), &format!("n{d}")));
        write(&folder.join("dump-1.pgdump"), format!("day {d}").as_bytes());
        write(&folder.join("manifest.json"), b"{}");
    }
    let verified = tenant.join(folder_name(at(8), "n8"));
    write(&verified.join(verdict_name(at(7), true)), b"{}");
    // Verified too, but a later verification failed.
    let unverified = tenant.join(folder_name(at(5), "n5"));
    write(&unverified.join(verdict_name(at(4), true)), b"{}");
    write(&unverified.join(verdict_name(at(3), false)), b"{}");
    // A backup killed three days ago (no manifest, its dump three days old), and one that
    // started two hours ago.
    let killed = tenant.join(folder_name(at(3) - TimeDelta::hours(1), "killed"));
    write(&killed.join("dump-2.pgdump"), b"half");
    age_file(&killed.join("dump-2.pgdump"), 3 * day);
    let running = tenant.join(folder_name(now - TimeDelta::hours(2), "running"));
    write(&running.join("dump-3.pgdump"), b"half");
    // Temporary files of uploads: one two days old (its writer was killed), one current.
    let newest = tenant.join(folder_name(at(1), "n1"));
    let stale_partial = newest.join("dump-4.pgdump.partial-00000000000000aa");
    write(&stale_partial, b"partial");
    age_file(&stale_partial, 2 * day);
    let live_partial = newest.join("dump-5.pgdump.partial-00000000000000bb");
    write(&live_partial, b"partial");

    let _worker = WorkerProcess::spawn(fleet.path());
    let (_, s) = fleet.run_and_wait("prune");
    let out = &s["tenants"]["acme"]["outputs"]["prune_backups/app"];
    assert_eq!(out["timezone"], "UTC");
    assert_eq!(out["aborted_uploads"], 1, "{out:#}");
    let rel = |p: &Path| p.strip_prefix(&store).unwrap().to_string_lossy().into_owned();
    let kept: BTreeSet<String> =
        [&newest, &tenant.join(folder_name(at(2), "n2")), &verified, &running].into_iter().map(|p| rel(p)).collect();
    assert_eq!(listed(out, "kept"), kept);
    let left: BTreeSet<String> = std::fs::read_dir(&tenant)
        .unwrap()
        .map(|e| format!("app/acme/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    // Deleted folders leave no directory behind.
    assert_eq!(left, kept);
    let deleted = out["deleted"].as_array().unwrap();
    assert_eq!(deleted.len(), 10 - 3 + 1, "{out:#}");
    let killed_entry = deleted.iter().find(|d| d["folder"] == rel(&killed)).expect("the killed backup is deleted");
    assert_eq!(killed_entry["why"], "incomplete");
    assert!(deleted.iter().any(|d| d["folder"] == rel(&unverified) && d["why"] == "retention"), "{out:#}");
    assert!(!stale_partial.exists(), "the stale upload's temporary file is still there");
    assert!(live_partial.exists(), "a current upload's temporary file was removed");
    assert!(verified.join("manifest.json").exists() && verified.join("dump-1.pgdump").exists());
    clear_redis(&fleet.name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_lists_sizes_ages_and_verdicts_and_stale_finds_the_tenants_past_the_limits() {
    let fleet =
        Fleet::new("fs", &[("acme", "active"), ("globex", "active"), ("initech", "active"), ("hooli", "suspended")]);
    let store = fleet.path().join("backups/app");
    let now = Utc::now();
    // acme: backed up two hours ago and verified an hour ago; a backup in progress beside it.
    let acme = store.join(format!("acme/{}", folder_name(now - TimeDelta::hours(2), "a1")));
    write(&acme.join("dump-1.pgdump"), &[7u8; 3000]);
    write(&acme.join("manifest.json"), &[b' '; 100]);
    write(&acme.join(verdict_name(now - TimeDelta::hours(1), true)), &[b' '; 20]);
    write(&store.join(format!("acme/{}/dump-2.pgdump", folder_name(now - TimeDelta::minutes(5), "a2"))), b"x");
    // globex: its newest backup is three days old and was never verified; the one before
    // passed 40 days ago.
    for (d, name) in [(3, "g2"), (45, "g1")] {
        let f = store.join(format!("globex/{}", folder_name(now - TimeDelta::days(d), name)));
        write(&f.join("dump-1.pgdump"), b"dump");
        write(&f.join("manifest.json"), b"{}");
    }
    let g1 = store.join(format!("globex/{}", folder_name(now - TimeDelta::days(45), "g1")));
    write(&g1.join(verdict_name(now - TimeDelta::days(40), true)), b"{}");
    // initech and hooli: nothing, not even a complete backup.
    write(&store.join(format!("initech/{}/dump-1.pgdump", folder_name(now - TimeDelta::days(5), "i1"))), b"x");

    let out = tenantry(fleet.path(), &["backups", "--json"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    let report: serde_json::Value = serde_json::from_str(&out.stdout()).expect("json");
    assert_eq!(report["stale_only"], false);
    let entries = report["tenants"].as_array().unwrap();
    let tenants: Vec<&str> = entries.iter().map(|e| e["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants, ["acme", "globex", "hooli", "initech"], "by tenant id");
    let acme_entry = &entries[0];
    assert_eq!(acme_entry["service"], "app");
    assert_eq!(acme_entry["incomplete"], 1);
    assert_eq!(acme_entry["stale"], serde_json::json!([]));
    let backups = acme_entry["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "only complete backups are listed: {acme_entry:#}");
    assert_eq!(backups[0]["folder"], format!("app/acme/{}", folder_name(now - TimeDelta::hours(2), "a1")));
    assert_eq!(backups[0]["size"], 3000 + 100 + 20);
    assert_eq!(backups[0]["verdict"], "passed");
    let age = backups[0]["age_seconds"].as_i64().unwrap();
    assert!((7200..7300).contains(&age), "{age}");
    assert_eq!(entries[1]["backups"].as_array().unwrap().len(), 2);
    assert_eq!(entries[1]["backups"][1]["verdict"], serde_json::Value::Null);
    assert_eq!(entries[2]["backups"], serde_json::json!([]));
    assert_eq!(entries[3]["backups"], serde_json::json!([]));
    assert_eq!(entries[3]["incomplete"], 1);

    // One tenant: each backup with its verdict.
    let out = tenantry(fleet.path(), &["backups", "acme"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    assert!(out.stdout().contains(&folder_name(now - TimeDelta::hours(2), "a1")), "{}", out.all());
    assert!(out.stdout().contains("3.0 KiB") && out.stdout().contains("passed"), "{}", out.all());
    assert!(out.stdout().contains("1 backup(s)"), "{}", out.all());

    // --stale: the active tenants past a limit (36h since the last backup, 30 days since the
    // last passed verification), with why; exit 1 because there are some.
    let out = tenantry(fleet.path(), &["backups", "--stale", "--json"], &[]);
    assert_eq!(out.code(), 1, "{}", out.all());
    let report: serde_json::Value = serde_json::from_str(&out.stdout()).expect("json");
    let stale: BTreeMap<String, Vec<String>> = report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let why = e["stale"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
            (e["tenant"].as_str().unwrap().to_string(), why)
        })
        .collect();
    assert_eq!(stale.keys().map(String::as_str).collect::<Vec<_>>(), ["globex", "initech"], "{stale:#?}");
    assert_eq!(stale["globex"].len(), 2, "{stale:#?}");
    assert!(stale["globex"][0].starts_with("newest backup is 3d 0h old"), "{stale:#?}");
    assert!(stale["globex"][1].starts_with("last passed verification is 40d 0h old"), "{stale:#?}");
    assert_eq!(stale["initech"], ["no complete backup"]);
    let out = tenantry(fleet.path(), &["backups", "--stale"], &[]);
    assert_eq!(out.code(), 1, "{}", out.all());
    assert!(out.stdout().contains("2 stale tenant placement(s)"), "{}", out.all());

    // The limits come from [backups]; a named tenant is reported whatever its status.
    let loose = ["--set", "backups.max_backup_age=4d", "--set", "backups.max_verify_age=60d"];
    let out = tenantry(fleet.path(), &[&loose[..], &["backups", "--stale", "--json"][..]].concat(), &[]);
    assert_eq!(out.code(), 1, "{}", out.all());
    let report: serde_json::Value = serde_json::from_str(&out.stdout()).expect("json");
    assert_eq!(report["max_backup_age"], "4days");
    assert_eq!(report["tenants"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(report["tenants"][0]["tenant"], "initech");
    let out = tenantry(fleet.path(), &["backups", "acme", "--stale"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    assert!(out.stdout().contains("no stale tenant"), "{}", out.all());
    let out = tenantry(fleet.path(), &["backups", "hooli", "--stale"], &[]);
    assert_eq!(out.code(), 1, "{}", out.all());
    assert!(out.stdout().contains("no complete backup"), "{}", out.all());

    let out = tenantry(fleet.path(), &["backups", "nobody"], &[]);
    assert_eq!(out.code(), 1, "{}", out.all());
    assert!(out.stderr().contains("no tenant \"nobody\" in the catalog"), "{}", out.all());
    let out = tenantry(fleet.path(), &["backups", "--service", "billing"], &[]);
    assert_eq!(out.code(), 1, "{}", out.all());
    assert!(out.stderr().contains("no service \"billing\""), "{}", out.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_on_s3_never_prints_the_stores_keys() {
    let fleet = Fleet::new("s3", &[("acme", "active")]);
    let client = s3().await;
    let root = format!("{}/", fleet.name);
    let folder = folder_name(Utc::now() - TimeDelta::hours(3), "s1");
    s3_put_all(
        &client,
        vec![
            (format!("{root}app/acme/{folder}/dump-1.pgdump"), vec![1u8; 2048]),
            (format!("{root}app/acme/{folder}/manifest.json"), b"{}".to_vec()),
        ],
    )
    .await;
    for (args, shows) in [
        (&["backups"][..], "2.0 KiB"),
        (&["backups", "acme"][..], folder.as_str()),
        (&["backups", "--json"][..], folder.as_str()),
    ] {
        let out = tenantry(fleet.path(), args, &[]);
        assert_eq!(out.code(), 0, "{args:?}\n{}", out.all());
        assert!(out.stdout().contains(shows), "{args:?}\n{}", out.all());
        assert!(!out.all().contains(&s3_env("TENANTRY_TEST_S3_SECRET_KEY")), "{args:?} printed the secret key");
    }
    // Backed up three hours ago, never verified but not for long: fresh.
    let out = tenantry(fleet.path(), &["backups", "--stale"], &[]);
    assert_eq!(out.code(), 0, "{}", out.all());
    assert!(out.stdout().contains("no stale tenant"), "{}", out.all());
    // Unreachable object store: exit 3, naming what failed.
    let out = tenantry(
        fleet.path(),
        &["backups"],
        &[("TENANTRY__STORAGE__ENDPOINT", "http://127.0.0.1:9"), ("AWS_MAX_ATTEMPTS", "1")],
    );
    assert_eq!(out.code(), 3, "{}", out.all());
    assert!(out.stderr().contains("listing the backups of service \"app\""), "{}", out.all());
    s3_clear(&client, &root).await;
}
