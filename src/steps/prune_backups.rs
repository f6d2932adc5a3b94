//! The `prune_backups` step: a tenant's backups past its retention policy (the last N, plus the newest of each of the last days, ISO weeks and months in the workflow's time zone) deleted from the object store, and the leftovers of killed backups swept.
//!
//! Plan, then apply: [`plan`] decides from one listing of the tenant's prefix and is pure
//! (the `dry_run` output is that plan, so a dry run and a real run cannot disagree);
//! `apply` only deletes what the plan names. Rules, in order:
//! - Only complete backups (folders holding a manifest, see [`crate::storage::backups`])
//!   count toward the keeps. Each keep rule chooses on its own, as restic's `forget` does:
//!   `keep_last` the N newest; `keep_daily` the newest backup of each of the N most recent
//!   days that have one; `keep_weekly` and `keep_monthly` the same for ISO weeks (Monday
//!   to Sunday) and calendar months. Days, weeks and months are those of the workflow's
//!   `timezone` (UTC by default): a backup at 23:30 UTC is the next day in Berlin.
//! - Whatever the policy says, the newest complete backup and the newest backup whose
//!   latest verification passed are kept: pruning never leaves a tenant without its proven
//!   restore point.
//! - A folder without a manifest is a backup in progress or the leftover of a killed one.
//!   It is deleted once both its stamp and its newest object are more than a day old (a
//!   `tenantry retry` of an old run writes into that run's old folder, so the stamp alone
//!   does not tell a leftover from a backup that is about to commit). Multipart uploads
//!   and `.uploading` markers older than a day under the tenant's prefix are aborted.
//!
//! A pruned folder loses its manifest first, so a folder that a failure leaves half-deleted
//! is never presented as a backup; the rest of it goes with the incomplete folders a day
//! later if a retry does not finish it. Every deletion is behind the lease's fence (checked
//! before each folder). Applying the plan does not change it: a retry plans the same keeps
//! and deletes what is left.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::define::{Findings, PlanEnv, Step};
use super::{StepContext, StepError};
use crate::catalog::{Engine, Placement};
use crate::storage::backups::{BackupFolder, tenant_backups, tenant_prefix};
use crate::storage::{ObjectStore, StorageError};
use crate::workflow::plan::StepAction;

/// How old an incomplete folder, a multipart upload or a temporary file must be before it
/// counts as left behind: no backup takes a day between its dump and its manifest.
pub const LEFTOVER_AGE: Duration = Duration::from_secs(24 * 3600);

pub struct PruneBackups;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The newest N complete backups.
    pub keep_last: Option<u32>,
    /// The newest backup of each of the N most recent days that have one.
    pub keep_daily: Option<u32>,
    /// The newest backup of each of the N most recent ISO weeks that have one.
    pub keep_weekly: Option<u32>,
    /// The newest backup of each of the N most recent calendar months that have one.
    pub keep_monthly: Option<u32>,
    /// Plan only: report what would be deleted, delete nothing (and abort no upload).
    pub dry_run: Option<bool>,
}

/// The keep rules of a step's options (an absent rule keeps nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl From<&Options> for Policy {
    fn from(o: &Options) -> Self {
        Self {
            keep_last: o.keep_last.unwrap_or(0),
            keep_daily: o.keep_daily.unwrap_or(0),
            keep_weekly: o.keep_weekly.unwrap_or(0),
            keep_monthly: o.keep_monthly.unwrap_or(0),
        }
    }
}

/// Why a folder is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    Last,
    Daily,
    Weekly,
    Monthly,
    /// The newest complete backup.
    Newest,
    /// The newest backup whose latest verification passed.
    NewestVerified,
    /// No manifest yet, and less than a day old: possibly a backup being written.
    InProgress,
}

/// Why a folder is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gone {
    /// A complete backup no keep rule chose.
    Retention,
    /// No manifest, and more than a day old: the leftover of a killed backup (or of a
    /// prune that stopped half-way through a folder).
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// `{service}/{tenant}/{stamp}_{run}[_{step}]`, relative to the store's prefix.
    pub folder: String,
    pub taken_at: DateTime<Utc>,
    pub why: Vec<Keep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Doomed {
    pub folder: String,
    pub taken_at: DateTime<Utc>,
    pub why: Gone,
    pub bytes: u64,
    /// The folder's objects in the order they are deleted: the manifest first.
    pub objects: Vec<String>,
}

/// What pruning one tenant's backups of one service does: every folder of the listing is
/// in exactly one of the two lists, each oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PrunePlan {
    pub kept: Vec<Kept>,
    pub delete: Vec<Doomed>,
}

impl Step for PruneBackups {
    type Options = Options;

    fn check(o: &Options, out: &mut Findings) {
        if [o.keep_last, o.keep_daily, o.keep_weekly, o.keep_monthly].iter().all(|k| k.unwrap_or(0) == 0) {
            out.push((
                "kind".into(),
                "prune_backups without any keep_* would delete every backup; set keep_last, keep_daily, keep_weekly or keep_monthly"
                    .to_string(),
            ));
        }
    }

    /// It only talks to the object store: any engine.
    fn runs_on(_engine: Engine) -> Result<(), String> {
        Ok(())
    }

    async fn plan(_options: &Options, targets: &[&Placement], env: PlanEnv<'_>) -> Vec<StepAction> {
        let action = match env.config.config.storage {
            Some(_) => StepAction::Run,
            None => StepAction::Blocked { reason: "prune_backups needs [storage] in the config".to_string() },
        };
        vec![action; targets.len()]
    }

    async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
        run(ctx, options).await
    }
}

#[tracing::instrument(name = "prune_backups", skip_all, fields(run = ctx.run, tenant = ctx.tenant, service = %ctx.placement.service, step = %ctx.step.label()))]
async fn run(ctx: &StepContext<'_>, options: &Options) -> Result<serde_json::Value, StepError> {
    let service = &ctx.placement.service;
    let store = ctx.objects.ok_or_else(|| {
        StepError::permanent(format!("tenant {:?}: prune_backups needs [storage] in the config", ctx.tenant))
    })?;
    let failed = |what: String| move |e: StorageError| store_error(ctx.tenant, &what, e);
    let folders = tenant_backups(store, service, ctx.tenant)
        .await
        .map_err(failed(format!("listing the backups under {:?}", tenant_prefix(service, ctx.tenant))))?;
    let policy = Policy::from(options);
    let plan = plan(&folders, &policy, ctx.timezone, ctx.clock.now());
    let dry_run = options.dry_run.unwrap_or(false);
    let swept = if dry_run { None } else { Some(apply(ctx, store, &plan).await?) };
    Ok(report(&plan, &policy, ctx.timezone, dry_run, swept))
}

/// What sweeping the tenant's old uploads came to: how many were aborted, or why the store
/// refused (a policy without `s3:ListBucketMultipartUploads`, say). A refusal does not stop
/// the retention, which is the step's job; it is reported in the output and the log.
type Swept = Result<usize, String>;

/// Aborts the tenant's uploads that are more than a day old, then deletes what `plan` says,
/// each folder behind the fence and its manifest first.
async fn apply(ctx: &StepContext<'_>, store: &ObjectStore, plan: &PrunePlan) -> Result<Swept, StepError> {
    let failed = |what: String| move |e: StorageError| store_error(ctx.tenant, &what, e);
    let prefix = tenant_prefix(&ctx.placement.service, ctx.tenant);
    ctx.fence.check().await?;
    let swept = match store.abort_stale_uploads(&prefix, LEFTOVER_AGE).await {
        Ok(n) => Ok(n),
        Err(e) if e.transient => {
            return Err(failed(format!("aborting the uploads under {prefix:?} older than a day"))(e));
        }
        Err(e) => {
            tracing::warn!(prefix, error = %e, "old uploads not swept; pruning goes on");
            Err(e.to_string())
        }
    };
    for doomed in &plan.delete {
        if ctx.cancel.is_cancelled() {
            return Err(StepError::transient(format!(
                "tenant {:?}: stopped before deleting {:?} (the step was stopped); a retry deletes the rest",
                ctx.tenant, doomed.folder
            )));
        }
        ctx.fence.check().await?;
        for key in &doomed.objects {
            store.delete(key).await.map_err(failed(format!("deleting {key:?} of {:?}", doomed.folder)))?;
        }
        tracing::info!(folder = doomed.folder, why = ?doomed.why, "backup folder deleted");
    }
    Ok(swept)
}

/// The step's output: the policy, what is kept and why, and what was deleted (`deleted`)
/// or would be (`would_delete`, for a dry run), and the uploads aborted.
fn report(plan: &PrunePlan, policy: &Policy, zone: Tz, dry_run: bool, swept: Option<Swept>) -> serde_json::Value {
    let gone: Vec<serde_json::Value> = plan
        .delete
        .iter()
        .map(|d| {
            serde_json::json!({
                "folder": d.folder, "taken_at": d.taken_at, "why": d.why,
                "objects": d.objects.len(), "bytes": d.bytes,
            })
        })
        .collect();
    let mut out = serde_json::json!({
        "dry_run": dry_run,
        "policy": policy,
        "timezone": zone.name(),
        "backups": plan.kept.iter().filter(|k| !k.why.contains(&Keep::InProgress)).count()
            + plan.delete.iter().filter(|d| d.why == Gone::Retention).count(),
        "kept": plan.kept,
        "freed_bytes": plan.delete.iter().map(|d| d.bytes).sum::<u64>(),
    });
    out[if dry_run { "would_delete" } else { "deleted" }] = serde_json::Value::Array(gone);
    match swept {
        Some(Ok(n)) => out["aborted_uploads"] = n.into(),
        Some(Err(e)) => out["sweep_error"] = e.into(),
        None => {}
    }
    out
}

fn store_error(tenant: &str, what: &str, e: StorageError) -> StepError {
    StepError::from(e).within(format_args!("tenant {tenant:?}: {what}"))
}

/// Decides what to keep and what to delete of one tenant's backup `folders` (a listing
/// grouped by [`crate::storage::backups::group`], in any order) at `now`, with days, weeks
/// and months in `zone`.
pub fn plan(folders: &[BackupFolder], policy: &Policy, zone: Tz, now: DateTime<Utc>) -> PrunePlan {
    let mut complete: Vec<&BackupFolder> = folders.iter().filter(|f| f.complete).collect();
    complete.sort_by(|a, b| b.taken_at.cmp(&a.taken_at).then(b.folder.cmp(&a.folder)));
    let times: Vec<DateTime<Utc>> = complete.iter().map(|f| f.taken_at).collect();
    let mut why = select(&times, policy, zone);
    if let Some(newest) = why.first_mut() {
        newest.insert(Keep::Newest);
    }
    if let Some(i) = complete.iter().position(|f| f.verified()) {
        why[i].insert(Keep::NewestVerified);
    }
    let mut out = PrunePlan::default();
    for (f, why) in complete.into_iter().zip(why) {
        if why.is_empty() {
            out.delete.push(doomed(f, Gone::Retention));
        } else {
            out.kept.push(Kept { folder: f.folder.clone(), taken_at: f.taken_at, why: why.into_iter().collect() });
        }
    }
    let day = TimeDelta::from_std(LEFTOVER_AGE).expect("a day fits");
    for f in folders.iter().filter(|f| !f.complete) {
        let last_write = f.objects.iter().map(|o| o.modified).max().unwrap_or(f.taken_at);
        if now - f.taken_at > day && now - last_write > day {
            out.delete.push(doomed(f, Gone::Incomplete));
        } else {
            out.kept.push(Kept { folder: f.folder.clone(), taken_at: f.taken_at, why: vec![Keep::InProgress] });
        }
    }
    out.kept.sort_by(|a, b| a.taken_at.cmp(&b.taken_at).then(a.folder.cmp(&b.folder)));
    out.delete.sort_by(|a, b| a.taken_at.cmp(&b.taken_at).then(a.folder.cmp(&b.folder)));
    out
}

fn doomed(f: &BackupFolder, why: Gone) -> Doomed {
    let manifest = f.manifest_key();
    let mut objects: Vec<String> = f.objects.iter().map(|o| o.key.clone()).collect();
    // The manifest first: from then on the folder is not a backup, whatever happens next.
    objects.sort_by_key(|k| *k != manifest);
    Doomed { folder: f.folder.clone(), taken_at: f.taken_at, why, bytes: f.size, objects }
}

/// For backups taken at `times` (newest first), the keep rules that choose each one (an
/// empty set: none does). Each rule walks the backups newest first and takes the first
/// (newest) of every new period until it has taken its count; periods are the calendar
/// days, ISO weeks and months of `zone`.
pub fn select(times: &[DateTime<Utc>], policy: &Policy, zone: Tz) -> Vec<BTreeSet<Keep>> {
    let mut out = vec![BTreeSet::new(); times.len()];
    for chosen in out.iter_mut().take(policy.keep_last as usize) {
        chosen.insert(Keep::Last);
    }
    type Period = fn(&DateTime<Tz>) -> (i32, u32, u32);
    let rules: [(Keep, u32, Period); 3] = [
        (Keep::Daily, policy.keep_daily, |t| (t.year(), t.month(), t.day())),
        (Keep::Weekly, policy.keep_weekly, |t| (t.iso_week().year(), t.iso_week().week(), 0)),
        (Keep::Monthly, policy.keep_monthly, |t| (t.year(), t.month(), 0)),
    ];
    for (keep, count, period_of) in rules {
        let mut taken = 0;
        let mut last = None;
        for (i, t) in times.iter().enumerate() {
            if taken >= count {
                break;
            }
            let period = period_of(&t.with_timezone(&zone));
            if last != Some(period) {
                last = Some(period);
                taken += 1;
                out[i].insert(keep);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};

    use super::*;
    use crate::storage::ObjectInfo;
    use crate::storage::backups::{MANIFEST, group, verdict_key};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn policy(last: u32, daily: u32, weekly: u32, monthly: u32) -> Policy {
        Policy { keep_last: last, keep_daily: daily, keep_weekly: weekly, keep_monthly: monthly }
    }

    /// The rules that keep each of `times` (given oldest first, as people write them).
    fn kept(times: &[&str], p: Policy, zone: Tz) -> Vec<Vec<Keep>> {
        let newest_first: Vec<DateTime<Utc>> = times.iter().rev().map(|t| utc(t)).collect();
        let mut out: Vec<Vec<Keep>> =
            select(&newest_first, &p, zone).into_iter().map(|s| s.into_iter().collect()).collect();
        out.reverse();
        out
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_that_has_a_backup() {
        let times = [
            "2026-03-01T02:00:00Z",
            "2026-03-03T02:00:00Z", // a gap: March 2nd has none, and does not count
            "2026-03-04T02:00:00Z",
            "2026-03-04T14:00:00Z", // the newest of its day
        ];
        let k = kept(&times, policy(0, 3, 0, 0), chrono_tz::UTC);
        assert_eq!(k, vec![vec![Keep::Daily], vec![Keep::Daily], vec![], vec![Keep::Daily]]);
        // keep_last counts backups, not days.
        let k = kept(&times, policy(2, 0, 0, 0), chrono_tz::UTC);
        assert_eq!(k, vec![vec![], vec![], vec![Keep::Last], vec![Keep::Last]]);
    }

    #[test]
    fn weeks_are_iso_weeks_from_monday() {
        // Sunday 2026-03-08 and Monday 2026-03-09 are in different ISO weeks (10 and 11);
        // Monday 03-02 to Sunday 03-08 is one week.
        let times = ["2026-03-02T02:00:00Z", "2026-03-08T02:00:00Z", "2026-03-09T02:00:00Z"];
        let k = kept(&times, policy(0, 0, 2, 0), chrono_tz::UTC);
        assert_eq!(k, vec![vec![], vec![Keep::Weekly], vec![Keep::Weekly]]);
        // Across a year: 2026-12-31 (Thursday) is in ISO week 53 of 2026, 2027-01-03 (Sunday)
        // too, 2027-01-04 is week 1 of 2027.
        let times = ["2026-12-31T02:00:00Z", "2027-01-03T02:00:00Z", "2027-01-04T02:00:00Z"];
        let k = kept(&times, policy(0, 0, 5, 0), chrono_tz::UTC);
        assert_eq!(k, vec![vec![], vec![Keep::Weekly], vec![Keep::Weekly]]);
    }

    #[test]
    fn months_keep_their_newest_backup_and_stop_at_the_count() {
        let times = [
            "2026-01-15T02:00:00Z",
            "2026-01-31T02:00:00Z",
            "2026-02-01T02:00:00Z",
            "2026-02-28T02:00:00Z",
            "2026-03-01T02:00:00Z",
        ];
        let k = kept(&times, policy(0, 0, 0, 2), chrono_tz::UTC);
        assert_eq!(k, vec![vec![], vec![], vec![], vec![Keep::Monthly], vec![Keep::Monthly]]);
        let k = kept(&times, policy(0, 0, 0, 12), chrono_tz::UTC);
        assert_eq!(k, vec![vec![], vec![Keep::Monthly], vec![], vec![Keep::Monthly], vec![Keep::Monthly]]);
    }

    #[test]
    fn days_weeks_and_months_are_the_workflows_zone() {
        let berlin = chrono_tz::Europe::Berlin;
        // 2026-03-31T22:30Z is already April 1st in Berlin (CEST, UTC+2).
        let times = ["2026-03-31T01:00:00Z", "2026-03-31T22:30:00Z"];
        assert_eq!(kept(&times, policy(0, 0, 0, 2), chrono_tz::UTC), vec![vec![], vec![Keep::Monthly]]);
        assert_eq!(kept(&times, policy(0, 0, 0, 2), berlin), vec![vec![Keep::Monthly], vec![Keep::Monthly]]);
        assert_eq!(kept(&times, policy(0, 2, 0, 0), chrono_tz::UTC), vec![vec![], vec![Keep::Daily]]);
        assert_eq!(kept(&times, policy(0, 2, 0, 0), berlin), vec![vec![Keep::Daily], vec![Keep::Daily]]);
        // Sunday 2026-03-29T22:30Z is Monday in Berlin: a new ISO week there, not in UTC.
        let times = ["2026-03-29T01:00:00Z", "2026-03-29T22:30:00Z"];
        assert_eq!(kept(&times, policy(0, 0, 2, 0), chrono_tz::UTC), vec![vec![], vec![Keep::Weekly]]);
        assert_eq!(kept(&times, policy(0, 0, 2, 0), berlin), vec![vec![Keep::Weekly], vec![Keep::Weekly]]);
    }

    #[test]
    fn a_day_is_a_local_day_across_dst_changes() {
        let berlin = chrono_tz::Europe::Berlin;
        // 2026-03-29 (spring forward) has 23 hours in Berlin: 22:00Z on the 28th (23:00 CET) is
        // still the 28th, 22:30Z on the 29th (00:30 CEST) is the 30th.
        let times = ["2026-03-28T22:00:00Z", "2026-03-28T23:30:00Z", "2026-03-29T21:30:00Z", "2026-03-29T22:30:00Z"];
        let k = kept(&times, policy(0, 10, 0, 0), berlin);
        assert_eq!(k, vec![vec![Keep::Daily], vec![], vec![Keep::Daily], vec![Keep::Daily]]);
        // 2026-10-25 (fall back) has 25 hours: 22:30Z on the 24th (00:30 CEST) and 22:30Z on
        // the 25th (23:30 CET) are both the 25th.
        let times = ["2026-10-24T22:30:00Z", "2026-10-25T22:30:00Z", "2026-10-25T23:30:00Z"];
        let k = kept(&times, policy(0, 10, 0, 0), berlin);
        assert_eq!(k, vec![vec![], vec![Keep::Daily], vec![Keep::Daily]]);
        let local = |t: &str| utc(t).with_timezone(&berlin).date_naive();
        assert_eq!(local("2026-10-25T22:30:00Z"), NaiveDate::from_ymd_opt(2026, 10, 25).unwrap());
    }

    fn obj(key: String, modified: DateTime<Utc>) -> ObjectInfo {
        ObjectInfo { key, size: 10, modified }
    }

    /// A tenant's folders: complete backups at 02:00 UTC of each day of `days` before `now`.
    fn history(now: DateTime<Utc>, days: std::ops::RangeInclusive<i64>) -> Vec<ObjectInfo> {
        let mut out = Vec::new();
        for d in days {
            let at = (now - TimeDelta::days(d)).date_naive().and_hms_opt(2, 0, 0).unwrap().and_utc();
            let folder = format!("app/t1/{}_r{d}", at.format("%Y%m%dT%H%M%SZ"));
            out.push(obj(format!("{folder}/dump-a.pgdump"), at));
            out.push(obj(format!("{folder}/{MANIFEST}"), at));
        }
        out
    }

    #[test]
    fn the_newest_and_the_newest_verified_backup_survive_any_policy() {
        let now = utc("2026-06-15T12:00:00Z");
        let mut listing = history(now, 1..=30);
        // Day 20 passed a verification; day 10 passed, then failed a later one.
        let f20 = listing[2 * 19].key.rsplit_once('/').unwrap().0.to_string();
        let f10 = listing[2 * 9].key.rsplit_once('/').unwrap().0.to_string();
        listing.push(obj(verdict_key(&f20, now - TimeDelta::days(5), "v1", true), now));
        listing.push(obj(verdict_key(&f10, now - TimeDelta::days(4), "v2", true), now));
        listing.push(obj(verdict_key(&f10, now - TimeDelta::days(3), "v3", false), now));
        let folders = group("app/t1/", listing);
        let p = plan(&folders, &policy(1, 0, 0, 0), chrono_tz::UTC, now);
        let kept: Vec<(&str, &[Keep])> = p.kept.iter().map(|k| (k.folder.as_str(), k.why.as_slice())).collect();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(kept[0], (f20.as_str(), &[Keep::NewestVerified][..]));
        assert_eq!(kept[1].1, &[Keep::Last, Keep::Newest]);
        assert_eq!(p.delete.len(), 28);
        assert!(p.delete.iter().all(|d| d.why == Gone::Retention));
        // A deleted folder loses its manifest first.
        let d = p.delete.iter().find(|d| d.folder == f10).unwrap();
        assert_eq!(d.objects[0], format!("{f10}/{MANIFEST}"));
        assert_eq!(d.objects.len(), 4);
    }

    #[test]
    fn incomplete_folders_go_once_they_and_their_last_write_are_a_day_old() {
        let now = utc("2026-06-15T12:00:00Z");
        let mut listing = history(now, 1..=3);
        let old = now - TimeDelta::days(3);
        let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
        // A killed backup three days ago.
        listing.push(obj(format!("app/t1/{}_killed/dump-x.pgdump", stamp(old)), old));
        // A retry of a three-day-old run whose dump was written an hour ago: about to commit.
        listing.push(obj(format!("app/t1/{}_retried/dump-y.pgdump", stamp(old)), now - TimeDelta::hours(1)));
        // A backup of a run started an hour ago.
        let recent = now - TimeDelta::hours(1);
        listing.push(obj(format!("app/t1/{}_running/dump-z.pgdump", stamp(recent)), recent));
        let folders = group("app/t1/", listing);
        let p = plan(&folders, &policy(10, 0, 0, 0), chrono_tz::UTC, now);
        let gone: Vec<&str> = p.delete.iter().map(|d| d.folder.as_str()).collect();
        assert_eq!(gone, vec![format!("app/t1/{}_killed", stamp(old))]);
        assert_eq!(p.delete[0].why, Gone::Incomplete);
        let in_progress: Vec<&str> =
            p.kept.iter().filter(|k| k.why == [Keep::InProgress]).map(|k| k.folder.as_str()).collect();
        assert_eq!(in_progress.len(), 2, "{in_progress:?}");
        assert_eq!(p.kept.len(), 5);
    }

    #[test]
    fn applying_a_plan_and_planning_again_deletes_nothing_more() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
        let listing = history(now, 1..=400);
        let p = policy(3, 7, 4, 6);
        let zone = chrono_tz::America::New_York;
        let first = plan(&group("app/t1/", listing.clone()), &p, zone, now);
        let gone: BTreeSet<&str> = first.delete.iter().map(|d| d.folder.as_str()).collect();
        let rest: Vec<ObjectInfo> =
            listing.into_iter().filter(|o| !gone.contains(o.key.rsplit_once('/').unwrap().0)).collect();
        let second = plan(&group("app/t1/", rest), &p, zone, now);
        assert!(second.delete.is_empty(), "{:?}", second.delete);
        assert_eq!(second.kept, first.kept);
        // In New York the backups (02:00Z) are the evening before: the newest is Saturday
        // June 13th. 7 days (June 7-13, the 3 last among them), 4 weeks (June 13 and 7,
        // May 31 and 24), 6 months (June 13, May 31, April 30, March 31, February 28,
        // January 31): 7 + 2 + 4.
        assert_eq!(first.kept.len(), 13, "{:#?}", first.kept);
    }
}
