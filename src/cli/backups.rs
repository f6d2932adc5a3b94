//! `tenantry backups [TENANT] [--service S] [--stale]`: the complete backups in the object store with their sizes, ages and verification verdicts, and the tenants whose newest backup or newest passed verification is older than `[backups]` allows.
//!
//! Without a tenant, one listing per service covers the fleet (not one per tenant). The
//! `--json` field names are stable: `now`, `max_backup_age`, `max_verify_age`, `stale_only`
//! and `tenants`, each with `tenant`, `service`, `backups` (`folder`, `taken_at`,
//! `age_seconds`, `size`, `verdict`, `verified_at`), `latest_backup`, `last_verified`,
//! `incomplete` and `stale` (reasons; empty when fresh).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::{Context, Failure};
use crate::catalog::TenantStatus;
use crate::config::BackupsConfig;
use crate::storage::StorageError;
use crate::storage::backups::{BackupFolder, age, service_backups, staleness, tenant_backups};

/// One tenant's backups of one service.
#[derive(Debug, Serialize)]
struct Entry {
    tenant: String,
    service: String,
    /// Complete backups (with a manifest), oldest first.
    backups: Vec<Row>,
    latest_backup: Option<DateTime<Utc>>,
    /// The newest passed verification of any of its backups.
    last_verified: Option<DateTime<Utc>>,
    /// Folders without a manifest (in progress, or left by a killed backup).
    incomplete: usize,
    /// Why the tenant is stale, per the `[backups]` limits; empty when it is not.
    stale: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Row {
    /// `{service}/{tenant}/{stamp}_{run}`, relative to the store's prefix.
    folder: String,
    taken_at: DateTime<Utc>,
    age_seconds: i64,
    /// Bytes of every object in the folder (dump, manifest, verdicts).
    size: u64,
    /// The latest verification's outcome (`passed`, `failed`), or null when never verified.
    verdict: Option<&'static str>,
    verified_at: Option<DateTime<Utc>>,
}

/// What `tenantry backups --json` prints and `GET /api/v1/backups` returns.
#[derive(Debug, Serialize)]
pub struct Report {
    now: DateTime<Utc>,
    max_backup_age: String,
    max_verify_age: String,
    stale_only: bool,
    tenants: Vec<Entry>,
}

pub async fn run(
    ctx: &Context,
    tenant: Option<&str>,
    service: Option<&str>,
    stale_only: bool,
    json: bool,
) -> Result<(), Failure> {
    let report = report(ctx, tenant, service, stale_only).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
    } else if stale_only {
        print_stale(&report);
    } else if tenant.is_some() {
        print_backups(&report);
    } else {
        print_fleet(&report);
    }
    // `--stale` is a check: it fails when it finds any.
    if stale_only && !report.tenants.is_empty() { Err(Failure::Reported) } else { Ok(()) }
}

/// The backups of `tenant` (or the fleet), of `service` (or every one), only the stale
/// ones with `stale_only`.
pub async fn report(
    ctx: &Context,
    tenant: Option<&str>,
    service: Option<&str>,
    stale_only: bool,
) -> Result<Report, Failure> {
    let catalog = ctx.checked_catalog().await?;
    if let Some(t) = tenant
        && catalog.tenant(t).is_none()
    {
        return Err(Failure::NotFound(format!("no tenant {t:?} in the catalog (see `tenantry tenants`)")));
    }
    if let Some(s) = service
        && !catalog.services.contains_key(s)
    {
        return Err(Failure::NotFound(format!("no service {s:?} in the config")));
    }
    let store = ctx
        .objects()
        .await?
        .ok_or_else(|| Failure::Failed("the config has no [storage]: there are no backups to list".to_string()))?;
    // Which (tenant, service) pairs: every placement of the selected tenants. The fleet's
    // freshness is about the tenants being served: `--stale` alone skips suspended and
    // archived ones (a named tenant is reported whatever its status).
    let targets: Vec<(String, String)> = catalog
        .tenants
        .iter()
        .filter(|t| tenant.is_none_or(|id| t.id.as_str() == id))
        .filter(|t| !(stale_only && tenant.is_none()) || t.status == TenantStatus::Active)
        .flat_map(|t| {
            t.placements
                .keys()
                .filter(move |s| service.is_none_or(|only| only == s.as_str()))
                .map(move |s| (t.id.as_str().to_string(), s.clone()))
        })
        .collect();
    let mut listed: BTreeMap<(String, String), Vec<BackupFolder>> = BTreeMap::new();
    match tenant {
        Some(t) => {
            for (_, s) in &targets {
                let folders = tenant_backups(&store, s, t).await.map_err(|e| store_failure(s, e))?;
                listed.insert((t.to_string(), s.clone()), folders);
            }
        }
        None => {
            let services: std::collections::BTreeSet<&String> = targets.iter().map(|(_, s)| s).collect();
            for s in services {
                for (t, folders) in service_backups(&store, s).await.map_err(|e| store_failure(s, e))? {
                    listed.insert((t, s.clone()), folders);
                }
            }
        }
    }
    let now = Utc::now();
    let limits = &ctx.config.config.backups;
    let mut entries: Vec<Entry> = targets
        .into_iter()
        .map(|(t, s)| {
            let folders = listed.remove(&(t.clone(), s.clone())).unwrap_or_default();
            entry(t, s, &folders, now, limits)
        })
        .collect();
    entries.sort_by(|a, b| (&a.tenant, &a.service).cmp(&(&b.tenant, &b.service)));
    if stale_only {
        entries.retain(|e| !e.stale.is_empty());
    }
    Ok(Report {
        now,
        max_backup_age: limits.max_backup_age.to_string(),
        max_verify_age: limits.max_verify_age.to_string(),
        stale_only,
        tenants: entries,
    })
}

fn store_failure(service: &str, e: StorageError) -> Failure {
    let message = format!("listing the backups of service {service:?}: {e}");
    if e.transient { Failure::Unreachable(message) } else { Failure::Failed(message) }
}

fn entry(
    tenant: String,
    service: String,
    folders: &[BackupFolder],
    now: DateTime<Utc>,
    limits: &BackupsConfig,
) -> Entry {
    let backups: Vec<Row> = folders
        .iter()
        .filter(|f| f.complete)
        .map(|f| Row {
            folder: f.folder.clone(),
            taken_at: f.taken_at,
            age_seconds: (now - f.taken_at).num_seconds(),
            size: f.size,
            verdict: f.verdicts.last().map(|v| if v.passed { "passed" } else { "failed" }),
            verified_at: f.verdicts.last().map(|v| v.at),
        })
        .collect();
    Entry {
        tenant,
        service,
        latest_backup: backups.last().map(|b| b.taken_at),
        last_verified: folders.iter().filter(|f| f.complete).filter_map(BackupFolder::last_verified).max(),
        incomplete: folders.iter().filter(|f| !f.complete).count(),
        stale: staleness(folders, now, limits),
        backups,
    }
}

fn print_backups(r: &Report) {
    println!("{:10}  {:44}  {:20}  {:>9}  {:>10}  VERDICT", "SERVICE", "BACKUP", "TAKEN (UTC)", "AGE", "SIZE");
    let mut count = 0;
    for e in &r.tenants {
        for b in &e.backups {
            count += 1;
            let name = b.folder.rsplit('/').next().unwrap_or(&b.folder);
            println!(
                "{:10}  {:44}  {:20}  {:>9}  {:>10}  {}",
                e.service,
                name,
                b.taken_at.format("%Y-%m-%d %H:%M:%S"),
                age(TimeDelta::seconds(b.age_seconds)),
                size(b.size),
                verdict(b, r.now)
            );
        }
        if !e.stale.is_empty() {
            eprintln!("{} {}: stale: {}", e.tenant, e.service, e.stale.join("; "));
        }
    }
    println!("{count} backup(s)");
}

fn print_fleet(r: &Report) {
    let width = r.tenants.iter().map(|e| e.tenant.len()).max().unwrap_or(6).max(6);
    println!(
        "{:width$}  {:10}  {:>7}  {:>9}  {:>10}  {:>10}  {:14}  STALE",
        "TENANT", "SERVICE", "BACKUPS", "NEWEST", "SIZE", "TOTAL", "VERIFIED"
    );
    let mut backups = 0;
    for e in &r.tenants {
        backups += e.backups.len();
        let newest = e.backups.last();
        let verified = e.last_verified.map_or("never".to_string(), |t| format!("{} ago", age(r.now - t)));
        println!(
            "{:width$}  {:10}  {:>7}  {:>9}  {:>10}  {:>10}  {:14}  {}",
            e.tenant,
            e.service,
            e.backups.len(),
            newest.map_or("-".to_string(), |b| age(TimeDelta::seconds(b.age_seconds))),
            newest.map_or("-".to_string(), |b| size(b.size)),
            size(e.backups.iter().map(|b| b.size).sum()),
            verified,
            if e.stale.is_empty() { "-" } else { "yes" }
        );
    }
    let stale = r.tenants.iter().filter(|e| !e.stale.is_empty()).count();
    println!(
        "{backups} backup(s) of {} tenant placement(s); {stale} stale (tenantry backups --stale)",
        r.tenants.len()
    );
}

fn print_stale(r: &Report) {
    if r.tenants.is_empty() {
        println!(
            "no stale tenant (backups.max_backup_age = {}, backups.max_verify_age = {})",
            r.max_backup_age, r.max_verify_age
        );
        return;
    }
    let width = r.tenants.iter().map(|e| e.tenant.len()).max().unwrap_or(6).max(6);
    println!("{:width$}  {:10}  WHY", "TENANT", "SERVICE");
    for e in &r.tenants {
        println!("{:width$}  {:10}  {}", e.tenant, e.service, e.stale.join("; "));
    }
    println!("{} stale tenant placement(s)", r.tenants.len());
}

fn verdict(b: &Row, now: DateTime<Utc>) -> String {
    match (b.verdict, b.verified_at) {
        (Some(v), Some(at)) => format!("{v} {} ago", age(now - at)),
        _ => "not verified".to_string(),
    }
}

/// `812 B`, `3.4 KiB`, `12.0 MiB`, `1.5 GiB`.
pub(super) fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ObjectInfo;
    use crate::storage::backups::{group, verdict_key};
    use crate::units::HumanDuration;

    fn limits(backup_hours: u64, verify_days: u64) -> BackupsConfig {
        BackupsConfig {
            max_backup_age: HumanDuration(std::time::Duration::from_secs(backup_hours * 3600)),
            max_verify_age: HumanDuration(std::time::Duration::from_secs(verify_days * 86_400)),
        }
    }

    /// Complete backups `days` ago (at `now` minus whole days), with verdicts
    /// (days ago, passed) on the backup `days[i]`.
    fn folders(now: DateTime<Utc>, days: &[i64], verdicts: &[(usize, i64, bool)]) -> Vec<BackupFolder> {
        let mut listing = Vec::new();
        let name = |d: i64| format!("app/t1/{}_r{d}", (now - TimeDelta::days(d)).format("%Y%m%dT%H%M%SZ"));
        for d in days {
            listing.push(ObjectInfo { key: format!("{}/manifest.json", name(*d)), size: 10, modified: now });
        }
        for (i, ago, passed) in verdicts {
            let key = verdict_key(&name(days[*i]), now - TimeDelta::days(*ago), "v", *passed);
            listing.push(ObjectInfo { key, size: 1, modified: now });
        }
        group("app/t1/", listing)
    }

    #[test]
    fn stale_when_the_newest_backup_or_the_last_passed_verification_is_too_old() {
        let now = DateTime::parse_from_rfc3339("2026-06-15T12:00:00Z").unwrap().with_timezone(&Utc);
        let l = limits(36, 30);
        assert_eq!(staleness(&[], now, &l), vec!["no complete backup"]);
        // Fresh: backed up a day ago, verified 10 days ago.
        assert!(staleness(&folders(now, &[20, 1], &[(0, 10, true)]), now, &l).is_empty());
        // Two days without a backup.
        let s = staleness(&folders(now, &[20, 2], &[(0, 10, true)]), now, &l);
        assert_eq!(s, vec!["newest backup is 2d 0h old (backups.max_backup_age = 1d 12h)"]);
        // The last verification that passed is 40 days old; a newer one failed.
        let s = staleness(&folders(now, &[60, 1], &[(0, 40, true), (1, 0, false)]), now, &l);
        assert_eq!(s.len(), 1, "{s:?}");
        assert!(s[0].starts_with("last passed verification is 40d 0h old"), "{s:?}");
        // Never verified: stale only once the oldest backup is older than the limit.
        assert!(staleness(&folders(now, &[29, 1], &[]), now, &l).is_empty());
        let s = staleness(&folders(now, &[31, 1], &[]), now, &l);
        assert!(s[0].starts_with("never verified, and its oldest backup is 31d 0h old"), "{s:?}");
    }

    #[test]
    fn ages_and_sizes_read_like_people_write_them() {
        assert_eq!(age(TimeDelta::seconds(12)), "12s");
        assert_eq!(age(TimeDelta::minutes(40)), "40m");
        assert_eq!(age(TimeDelta::minutes(5 * 60 + 12)), "5h 12m");
        assert_eq!(age(TimeDelta::hours(76)), "3d 4h");
        assert_eq!(size(812), "812 B");
        assert_eq!(size(3 * 1024 + 400), "3.4 KiB");
        assert_eq!(size(12 << 20), "12.0 MiB");
        assert_eq!(size(3 << 29), "1.5 GiB");
    }
}
