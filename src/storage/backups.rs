//! The backups in the object store, as `backup` lays them out: a tenant's backup folders, which of them are complete (hold a manifest), and the verdicts of their restore verifications.
//!
//! Layout under the store's prefix: `{service}/{tenant}/{stamp}_{run}[_{step}]/` holding a
//! dump, `manifest.json` (the commit point: without it a folder is not a backup) and, once
//! verified, one verdict object per verification, named
//! `verify-{stamp}_{run}-{passed|failed}.json` so that a listing tells the outcome without
//! reading every verdict.

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::{ObjectInfo, ObjectStore, StorageError};
use crate::config::BackupsConfig;

/// The manifest's name in a backup folder.
pub const MANIFEST: &str = "manifest.json";

/// One backup folder of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFolder {
    /// `{service}/{tenant}/{stamp}_{run}[_{step}]`, relative to the store's prefix.
    pub folder: String,
    /// When the backup's run started (the folder's stamp), or its oldest object's time when
    /// the name has no stamp.
    pub taken_at: DateTime<Utc>,
    /// Holds its manifest: a backup that can be listed, restored and verified.
    pub complete: bool,
    /// Bytes of every object in the folder.
    pub size: u64,
    /// Its verifications, oldest first.
    pub verdicts: Vec<VerdictRef>,
    pub objects: Vec<ObjectInfo>,
}

impl BackupFolder {
    pub fn manifest_key(&self) -> String {
        format!("{}/{MANIFEST}", self.folder)
    }

    /// The newest verification passed.
    pub fn verified(&self) -> bool {
        self.verdicts.last().is_some_and(|v| v.passed)
    }

    /// When it was last verified successfully.
    pub fn last_verified(&self) -> Option<DateTime<Utc>> {
        self.verdicts.iter().rev().find(|v| v.passed).map(|v| v.at)
    }
}

/// A verdict object, from its key alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictRef {
    pub key: String,
    pub at: DateTime<Utc>,
    pub run: String,
    pub passed: bool,
}

/// A restore verification's outcome, stored beside the backup it verified.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub format: u32,
    pub tenant: String,
    pub service: String,
    /// The verified backup's folder.
    pub backup: String,
    pub run: String,
    pub verified_at: DateTime<Utc>,
    pub passed: bool,
    /// Every check, in the order made; a failed one names what differed.
    pub checks: Vec<Check>,
    /// Restore time objective measured: download, restore and checks, in milliseconds.
    pub rto_ms: u64,
    /// Recovery point: the backup's age when verified (verified_at − the manifest's
    /// `finished_at`), in milliseconds.
    pub rpo_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// The key of a verdict written at `at` by `run` about `folder`.
pub fn verdict_key(folder: &str, at: DateTime<Utc>, run: &str, passed: bool) -> String {
    let outcome = if passed { "passed" } else { "failed" };
    format!("{folder}/verify-{}_{run}-{outcome}.json", at.format("%Y%m%dT%H%M%SZ"))
}

/// `{service}/{tenant}/`: where a tenant's backups live.
pub fn tenant_prefix(service: &str, tenant: &str) -> String {
    format!("{service}/{tenant}/")
}

/// A tenant's backup folders, oldest first (complete or not; see
/// [`BackupFolder::complete`]). One listing of the tenant's prefix.
pub async fn tenant_backups(
    store: &ObjectStore,
    service: &str,
    tenant: &str,
) -> Result<Vec<BackupFolder>, StorageError> {
    let prefix = tenant_prefix(service, tenant);
    Ok(group(&prefix, store.list(&prefix).await?))
}

/// Every tenant's backup folders of `service`, by tenant id, each oldest first: one
/// listing of the service's prefix (for fleet-wide reports, instead of one per tenant).
pub async fn service_backups(
    store: &ObjectStore,
    service: &str,
) -> Result<std::collections::BTreeMap<String, Vec<BackupFolder>>, StorageError> {
    let mut by_tenant: std::collections::BTreeMap<String, Vec<ObjectInfo>> = std::collections::BTreeMap::new();
    for o in store.list(&format!("{service}/")).await? {
        let Some(tenant) = o.key.strip_prefix(&format!("{service}/")).and_then(|r| r.split_once('/')).map(|(t, _)| t)
        else {
            continue;
        };
        by_tenant.entry(tenant.to_string()).or_default().push(o);
    }
    Ok(by_tenant
        .into_iter()
        .map(|(tenant, objects)| {
            let folders = group(&tenant_prefix(service, &tenant), objects);
            (tenant, folders)
        })
        .collect())
}

/// Groups a listing of `prefix` (a tenant's prefix) into folders, oldest first.
pub fn group(prefix: &str, objects: Vec<ObjectInfo>) -> Vec<BackupFolder> {
    let mut folders: Vec<BackupFolder> = Vec::new();
    for o in objects {
        let Some(rest) = o.key.strip_prefix(prefix) else { continue };
        let Some((name, file)) = rest.split_once('/') else { continue };
        if file.contains('/') {
            continue;
        }
        let folder = format!("{prefix}{name}");
        let i = match folders.iter().position(|f| f.folder == folder) {
            Some(i) => i,
            None => {
                folders.push(BackupFolder {
                    taken_at: stamp_time(name).unwrap_or(o.modified),
                    folder,
                    complete: false,
                    size: 0,
                    verdicts: Vec::new(),
                    objects: Vec::new(),
                });
                folders.len() - 1
            }
        };
        let f = &mut folders[i];
        if stamp_time(name).is_none() {
            f.taken_at = f.taken_at.min(o.modified);
        }
        if file == MANIFEST {
            f.complete = true;
        } else if let Some(v) = parse_verdict(&o.key, file) {
            f.verdicts.push(v);
        }
        f.size += o.size;
        f.objects.push(o);
    }
    for f in &mut folders {
        f.verdicts.sort_by(|a, b| a.at.cmp(&b.at).then(a.key.cmp(&b.key)));
    }
    folders.sort_by(|a, b| a.taken_at.cmp(&b.taken_at).then(a.folder.cmp(&b.folder)));
    folders
}

/// The time of a folder name `20261124T230501Z_...`.
fn stamp_time(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.get(..16)?;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok().map(|t| t.and_utc())
}

/// `verify-{stamp}_{run}-{passed|failed}.json`.
fn parse_verdict(key: &str, file: &str) -> Option<VerdictRef> {
    let body = file.strip_prefix("verify-")?.strip_suffix(".json")?;
    let (rest, passed) =
        if let Some(r) = body.strip_suffix("-passed") { (r, true) } else { (body.strip_suffix("-failed")?, false) };
    let at = stamp_time(rest)?;
    let run = rest.get(17..).unwrap_or_default().to_string();
    Some(VerdictRef { key: key.to_string(), at, run, passed })
}

/// Why a tenant's backups of one service are stale at `now` (empty: they are not).
pub fn staleness(folders: &[BackupFolder], now: DateTime<Utc>, limits: &BackupsConfig) -> Vec<String> {
    let complete: Vec<&BackupFolder> = folders.iter().filter(|f| f.complete).collect();
    let max_backup = TimeDelta::from_std(limits.max_backup_age.0).unwrap_or(TimeDelta::MAX);
    let max_verify = TimeDelta::from_std(limits.max_verify_age.0).unwrap_or(TimeDelta::MAX);
    let Some(newest) = complete.iter().map(|f| f.taken_at).max() else {
        return vec!["no complete backup".to_string()];
    };
    let mut out = Vec::new();
    if now - newest > max_backup {
        out.push(format!("newest backup is {} old (backups.max_backup_age = {})", age(now - newest), age(max_backup)));
    }
    let oldest = complete.iter().map(|f| f.taken_at).min().unwrap_or(newest);
    match complete.iter().filter_map(|f| f.last_verified()).max() {
        Some(verified) if now - verified > max_verify => out.push(format!(
            "last passed verification is {} old (backups.max_verify_age = {})",
            age(now - verified),
            age(max_verify)
        )),
        Some(_) => {}
        None if now - oldest > max_verify => out.push(format!(
            "never verified, and its oldest backup is {} old (backups.max_verify_age = {})",
            age(now - oldest),
            age(max_verify)
        )),
        None => {}
    }
    out
}

/// A duration as people write it: `12s`, `5m`, `3h 20m`, `2d 4h`.
pub fn age(d: TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    let (days, hours, minutes) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64) -> ObjectInfo {
        ObjectInfo { key: key.to_string(), size, modified: Utc::now() }
    }

    #[test]
    fn a_listing_groups_into_folders_with_manifests_and_verdicts() {
        let at = NaiveDateTime::parse_from_str("20261201T020000Z", "%Y%m%dT%H%M%SZ").unwrap().and_utc();
        let v = verdict_key("app/t1/20261130T020000Z_r1", at, "20261201-020000-abc", true);
        let listing = vec![
            obj("app/t1/20261130T020000Z_r1/dump-a.pgdump", 100),
            obj("app/t1/20261130T020000Z_r1/manifest.json", 10),
            obj(&v, 5),
            obj("app/t1/20261201T020000Z_r2/dump-b.pgdump", 50),
            obj("app/t1/stray", 1),
        ];
        let folders = group("app/t1/", listing);
        assert_eq!(folders.len(), 2);
        assert_eq!(folders[0].folder, "app/t1/20261130T020000Z_r1");
        assert!(folders[0].complete);
        assert_eq!(folders[0].size, 115);
        assert!(folders[0].verified());
        assert_eq!(folders[0].last_verified(), Some(at));
        assert_eq!(folders[0].verdicts[0].run, "20261201-020000-abc");
        assert!(!folders[1].complete);
        assert!(folders[1].verdicts.is_empty());
        assert!(folders[0].taken_at < folders[1].taken_at);
    }

    #[test]
    fn a_failed_verification_after_a_passed_one_leaves_the_backup_unverified() {
        let f = "app/t1/20261130T020000Z_r1";
        let t = |s: &str| NaiveDateTime::parse_from_str(s, "%Y%m%dT%H%M%SZ").unwrap().and_utc();
        let listing = vec![
            obj(&format!("{f}/manifest.json"), 1),
            obj(&verdict_key(f, t("20261201T020000Z"), "r2", true), 1),
            obj(&verdict_key(f, t("20261202T020000Z"), "r3", false), 1),
        ];
        let folders = group("app/t1/", listing);
        assert!(!folders[0].verified());
        assert_eq!(folders[0].last_verified(), Some(t("20261201T020000Z")));
    }
}
