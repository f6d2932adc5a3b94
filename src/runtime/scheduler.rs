//! The scheduler: fires each scheduled workflow at its cron ticks in its time zone, once per tick across all replicas, retrying a tick until it is enqueued, with the overlap and catch-up policies.
//!
//! Tick times come from [`Schedule`] (croner evaluated in the workflow's zone, so DST moves
//! ticks correctly). tokio-cron-scheduler was considered and not used: its `_tz` jobs fix
//! the UTC offset once when the job is created (ticks drift by an hour across a DST change)
//! and it parses with day-of-month AND day-of-week, unlike the cron semantics `validate`
//! checks.
//!
//! Every replica runs one loop per scheduled workflow. The only state is one Redis hash per
//! workflow ([`Keys::schedule`](super::keys::Keys::schedule)): `done`, the newest tick that
//! was handled (its run created, or skipped on purpose), and `claim`, the replica working on
//! the workflow right now. Whenever a loop wakes up it reads `done`, works out the newest
//! tick that is due since then (so ticks missed while Redis, the catalog or every replica
//! was down are caught up by the `catch_up` policy), claims it, and creates the run, which is
//! published by the same script that records the tick as done (`tick_done.lua`). When anything fails on the way (Redis,
//! the catalog) nothing is recorded: the loop tries again after a backoff, so a tick is
//! never lost, and never run twice, because `done` only moves forward.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::clock::{self, SharedClock};
use super::launch;
use super::model::{RunState, Trigger};
use super::store::{StoreError, TickClaim, TickClaimed, TickDone};
use super::worker::Runtime;
use crate::catalog::Catalog;
use crate::config::LoadedConfig;
use crate::workflow::{CatchUp, Overlap, Schedule, Workflow};

/// How long a replica's claim on a workflow lasts; it is renewed at every attempt. A
/// replica that dies between claiming a tick and creating its run holds the workflow this
/// long, then another replica (or the same one restarted) does the tick. A replica slower
/// than this (a huge catalog) may see another one start the same tick: `tick_done.lua` then
/// lets only one of them create a run.
const CLAIM_LIFETIME: Duration = Duration::from_secs(120);

/// A tick handled more than this after its time counts as missed, and `catch_up` decides
/// (`none` skips it). Within it, a tick delayed by a short outage (Redis restarting, a
/// catalog query retried) still runs whatever the policy.
const LATE_AFTER: TimeDelta = TimeDelta::seconds(60);

/// Delays between attempts after a failure: the first, doubling up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Ticks walked at most to find the newest one due (see [`newest_due`]).
const WALK_LIMIT: usize = 100_000;

/// Resolves the catalog afresh for each tick (the tenant list changes between nights).
pub type CatalogLoader =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Catalog, String>> + Send>> + Send + Sync>;

/// What every workflow loop needs.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<LoadedConfig>,
    pub catalog: CatalogLoader,
    /// Where "now" comes from ([`clock::SystemClock`] outside tests).
    pub clock: SharedClock,
}

/// Why one attempt at a tick failed. Either way nothing was recorded, and the loop tries
/// the tick again after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the catalog: {0}")]
    Catalog(String),
}

/// Runs one loop per scheduled workflow until `shutdown`.
pub async fn run(runtime: Arc<Runtime>, ctx: Context, workflows: Vec<Workflow>, shutdown: CancellationToken) {
    let mut tasks = Vec::new();
    for wf in workflows {
        let Some(schedule) = wf.schedule.clone() else { continue };
        info!(workflow = %wf.name, schedule = %schedule.expression, timezone = %schedule.timezone, "scheduled");
        let (runtime, ctx, shutdown) = (runtime.clone(), ctx.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move { workflow_loop(runtime, ctx, wf, schedule, shutdown).await }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn workflow_loop(
    runtime: Arc<Runtime>,
    ctx: Context,
    wf: Workflow,
    schedule: Schedule,
    shutdown: CancellationToken,
) {
    let floor = ctx.clock.now().timestamp_millis();
    let mut ticker = Ticker { runtime, ctx, wf, schedule, floor };
    let mut retry = RETRY_FIRST;
    loop {
        let wait = match ticker.attempt().await {
            Ok(Some(at)) => {
                retry = RETRY_FIRST;
                clock::until(ticker.ctx.clock.as_ref(), at)
            }
            Ok(None) => {
                warn!(workflow = %ticker.wf.name, schedule = %ticker.schedule.expression, "the schedule fires no more; its loop ends");
                return;
            }
            Err(e) => {
                warn!(workflow = %ticker.wf.name, error = %e, retry_in = ?retry, "scheduled tick not enqueued yet; trying again");
                let wait = retry;
                retry = next_retry(retry);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The delay after `previous` when the attempt failed again.
fn next_retry(previous: Duration) -> Duration {
    (previous * 2).min(RETRY_MAX)
}

/// One workflow's loop state.
struct Ticker {
    runtime: Arc<Runtime>,
    ctx: Context,
    wf: Workflow,
    schedule: Schedule,
    /// No tick up to this time (ms) is owed: the loop's start, then the newest `done` seen.
    /// Written back when Redis has no `done` (it lost its data), so the ticks this process
    /// knew were owed are still caught up.
    floor: i64,
}

impl Ticker {
    /// Handles the newest tick that is due, if any. Returns when to try next (None: the
    /// schedule never fires again), or the error that left the tick unhandled.
    async fn attempt(&mut self) -> Result<Option<DateTime<Utc>>, TickError> {
        let store = &self.runtime.store;
        let now = self.ctx.clock.now();
        let done_ms = store.schedule_done(&self.wf.name, self.floor).await?;
        self.floor = self.floor.max(done_ms);
        let done = DateTime::from_timestamp_millis(done_ms).unwrap_or(now);
        let (tick, late, collapsed) = match plan(&self.schedule, done, now) {
            Plan::Never => return Ok(None),
            Plan::Wait(next) => return Ok(Some(next)),
            Plan::Due { tick, late, collapsed } => (tick, late, collapsed),
        };
        let claim = TickClaim {
            workflow: self.wf.name.clone(),
            tick_ms: tick.timestamp_millis(),
            owner: self.runtime.worker_id.clone(),
        };
        match store.claim_tick(&claim, CLAIM_LIFETIME).await? {
            TickClaimed::Ok => {}
            // Handled meanwhile by another replica: plan again from the new `done`.
            TickClaimed::Done(done_ms) => {
                self.floor = self.floor.max(done_ms);
                return Ok(Some(now));
            }
            TickClaimed::Busy { owner, expires_in, .. } => {
                debug!(workflow = %self.wf.name, %tick, %owner, "another replica is working on the workflow");
                // Look again at the next tick, or when that replica's claim runs out if it
                // died; not sooner than a second.
                let expiry = now + TimeDelta::from_std(expires_in).unwrap_or(TimeDelta::MAX);
                let next = self.schedule.next_after(now).map_or(expiry, |n| n.min(expiry));
                return Ok(Some(next.max(now + TimeDelta::seconds(1))));
            }
        }
        self.handle(&claim, tick, done, late, collapsed).await?;
        Ok(self.schedule.next_after(tick))
    }

    /// Creates the tick's run, or records it as skipped, according to the policies.
    async fn handle(
        &self,
        claim: &TickClaim,
        tick: DateTime<Utc>,
        done: DateTime<Utc>,
        late: bool,
        collapsed: bool,
    ) -> Result<(), TickError> {
        let wf = &self.wf;
        let store = &self.runtime.store;
        if late && wf.spec.catch_up == CatchUp::None {
            return self.skip(claim, tick, "the tick was missed (catch_up = none)").await;
        }
        if late || collapsed {
            info!(workflow = %wf.name, %tick, since = %done, "catching up: one run for the newest tick missed since the last one handled");
        }
        let mut previous_going = false;
        let mut one_waiting = false;
        for id in store.active().await? {
            let record = match store.record(&id).await {
                Ok(r) => r,
                Err(StoreError::NoSuchRun(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if record.workflow == wf.name && !record.state.is_terminal() {
                previous_going = true;
                one_waiting |= record.state == RunState::Queued;
            }
        }
        let queued = match (previous_going, wf.spec.overlap) {
            (false, _) => false,
            (true, Overlap::Skip) => {
                return self.skip(claim, tick, "the previous run is still going (overlap = skip)").await;
            }
            (true, Overlap::Queue) if one_waiting => {
                return self
                    .skip(claim, tick, "a run of the workflow is already waiting (overlap = queue keeps one)")
                    .await;
            }
            (true, Overlap::Queue) => true,
        };
        let catalog = (self.ctx.catalog)().await.map_err(TickError::Catalog)?;
        let mut spec = launch::snapshot(wf, &catalog, &self.ctx.config, &[]);
        launch::skip_up_to_date(&mut spec, &catalog, &self.ctx.config).await;
        launch::apply_selections(&mut spec, &catalog, &self.ctx.config).await;
        if spec.tenants.is_empty() {
            return self.skip(claim, tick, "no tenant selected; nothing to run").await;
        }
        let trigger = Trigger::Schedule { tick_ms: claim.tick_ms };
        match store.create_scheduled(&spec, &trigger, queued, claim).await? {
            TickDone::Refused(why) => info!(workflow = %wf.name, %tick, why, "tick not enqueued by this replica"),
            TickDone::Recorded if queued => {
                info!(workflow = %wf.name, %tick, run = %spec.id, "tick queued behind the previous run (overlap = queue)");
            }
            TickDone::Recorded => {
                // The run exists; if its first dispatch fails, the maintenance pass does it.
                if let Err(e) = self.runtime.advance(&spec).await {
                    warn!(workflow = %wf.name, run = %spec.id, error = %e, "scheduled run created; its first dispatch is left to the maintenance pass");
                }
                info!(workflow = %wf.name, %tick, run = %spec.id, tenants = spec.tenants.len(), "scheduled run started");
            }
        }
        Ok(())
    }

    /// Records the tick as handled without a run.
    async fn skip(&self, claim: &TickClaim, tick: DateTime<Utc>, why: &str) -> Result<(), TickError> {
        match self.runtime.store.skip_tick(claim).await? {
            TickDone::Recorded => info!(workflow = %self.wf.name, %tick, "tick skipped: {why}"),
            TickDone::Refused(refused) => {
                debug!(workflow = %self.wf.name, %tick, refused, "tick not skipped by this replica")
            }
        }
        Ok(())
    }
}

/// What a workflow's loop does at `now`, given `done` (every tick up to it is handled).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Nothing is due before this tick.
    Wait(DateTime<Utc>),
    /// Handle `tick` now. `late`: more than [`LATE_AFTER`] past, so `catch_up` decides.
    /// `collapsed`: older ticks since `done` were missed, and this one stands for them.
    Due { tick: DateTime<Utc>, late: bool, collapsed: bool },
    /// The schedule never fires again.
    Never,
}

fn plan(schedule: &Schedule, done: DateTime<Utc>, now: DateTime<Utc>) -> Plan {
    if let Some(tick) = newest_due(schedule, done, now) {
        let collapsed = schedule.next_after(done).is_some_and(|first| first < tick);
        return Plan::Due { tick, late: now - tick > LATE_AFTER, collapsed };
    }
    // `done` may be ahead of this replica's clock (another replica's clock is fast).
    match schedule.next_after(done.max(now)) {
        Some(next) => Plan::Wait(next),
        None => Plan::Never,
    }
}

/// The newest tick after `done` and not after `now`, if any. Looks in growing windows
/// back from `now`, so a per-second schedule after a week of downtime walks a minute of
/// ticks, not 600,000.
fn newest_due(schedule: &Schedule, done: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    const WINDOWS: [TimeDelta; 5] =
        [TimeDelta::minutes(1), TimeDelta::hours(1), TimeDelta::days(1), TimeDelta::days(32), TimeDelta::days(400)];
    for window in WINDOWS {
        let from = done.max(now - window);
        if let Some(tick) = last_tick_in(schedule, from, now) {
            return Some(tick);
        }
        if from == done {
            return None;
        }
    }
    last_tick_in(schedule, done, now)
}

/// The last tick after `from` and not after `now`, walking at most [`WALK_LIMIT`] ticks.
fn last_tick_in(schedule: &Schedule, from: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let (mut t, mut last) = (from, None);
    for _ in 0..WALK_LIMIT {
        match schedule.next_after(t) {
            Some(next) if next <= now => (t, last) = (next, Some(next)),
            _ => break,
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::clock::{Clock, TokioClock};

    fn at(t: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_tick_on_time_is_due_and_nothing_before_the_next() {
        let s = Schedule::parse("0 * * * *", None).unwrap();
        let done = at("2026-01-01T10:00:00Z");
        assert_eq!(plan(&s, done, at("2026-01-01T10:30:00Z")), Plan::Wait(at("2026-01-01T11:00:00Z")));
        assert_eq!(
            plan(&s, done, at("2026-01-01T11:00:00.004Z")),
            Plan::Due { tick: at("2026-01-01T11:00:00Z"), late: false, collapsed: false }
        );
        // Retried 40 s after its time (Redis was restarting): still on time.
        assert_eq!(
            plan(&s, done, at("2026-01-01T11:00:40Z")),
            Plan::Due { tick: at("2026-01-01T11:00:00Z"), late: false, collapsed: false }
        );
    }

    #[test]
    fn ticks_missed_during_an_outage_collapse_into_the_newest() {
        // A 15-second schedule, Redis gone for 30 s across two ticks.
        let s = Schedule::parse("*/15 * * * * *", None).unwrap();
        let done = at("2026-01-01T10:00:00Z");
        assert_eq!(
            plan(&s, done, at("2026-01-01T10:00:32Z")),
            Plan::Due { tick: at("2026-01-01T10:00:30Z"), late: false, collapsed: true }
        );
        // Hours down: the newest tick, late (catch_up = none skips it).
        let s = Schedule::parse("0 * * * *", None).unwrap();
        assert_eq!(
            plan(&s, done, at("2026-01-01T13:30:00Z")),
            Plan::Due { tick: at("2026-01-01T13:00:00Z"), late: true, collapsed: true }
        );
    }

    #[test]
    fn a_week_down_on_a_per_second_schedule_catches_up_with_the_newest_second() {
        // The walk from `done` used to stop after 100,000 ticks, a day later than `done`:
        // the catch-up ran for a tick six days old, and the next wake-up caught up again.
        let s = Schedule::parse("* * * * * *", None).unwrap();
        let now = at("2026-01-08T10:00:00.500Z");
        let started = std::time::Instant::now();
        let plan = plan(&s, at("2026-01-01T10:00:00Z"), now);
        assert_eq!(plan, Plan::Due { tick: at("2026-01-08T10:00:00Z"), late: false, collapsed: true });
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[test]
    fn a_done_ahead_of_this_clock_waits_for_the_tick_after_it() {
        // Another replica with a fast clock handled 10:00:15 already; this one reads 10:00:14.
        let s = Schedule::parse("*/15 * * * * *", None).unwrap();
        assert_eq!(
            plan(&s, at("2026-01-01T10:00:15Z"), at("2026-01-01T10:00:14Z")),
            Plan::Wait(at("2026-01-01T10:00:30Z"))
        );
    }

    #[test]
    fn retries_back_off_from_one_second_to_thirty() {
        let mut d = RETRY_FIRST;
        let mut seen = vec![d.as_secs()];
        for _ in 0..6 {
            d = next_retry(d);
            seen.push(d.as_secs());
        }
        assert_eq!(seen, vec![1, 2, 4, 8, 16, 30, 30]);
    }

    /// The loop's plan-sleep-handle cycle in virtual time, through the Europe/Berlin
    /// fall-back (25 October 2026, 02:00-02:59 local twice): every 15-second tick once, in
    /// order, on time, and the loop never wakes without something to do.
    #[tokio::test(start_paused = true)]
    async fn the_loop_meets_every_tick_once_through_a_dst_fall_back_in_virtual_time() {
        let s = Schedule::parse("*/15 * * * * *", Some("Europe/Berlin")).unwrap();
        let clock = TokioClock::starting_at(at("2026-10-25T00:58:00Z"));
        let end = at("2026-10-25T02:02:00Z");
        let mut done = clock.now();
        let (mut fired, mut wakeups) = (Vec::new(), 0);
        while clock.now() <= end {
            match plan(&s, done, clock.now()) {
                Plan::Wait(next) => {
                    assert!(next > clock.now(), "waits for the past: {next}");
                    tokio::time::sleep(clock::until(&clock, next)).await;
                    wakeups += 1;
                }
                Plan::Due { tick, late, collapsed } => {
                    assert!(!late && !collapsed, "{tick} handled late at {}", clock.now());
                    fired.push(tick);
                    done = tick;
                }
                Plan::Never => panic!("the schedule ended"),
            }
            assert!(wakeups < 1000, "the loop spins");
        }
        // 00:58:15Z to 02:02:00Z: 64 minutes of real time, 4 ticks a minute.
        assert_eq!(fired.len(), 64 * 4, "first {:?}, last {:?}", fired.first(), fired.last());
        assert!(fired.windows(2).all(|w| w[1] - w[0] == TimeDelta::seconds(15)), "{fired:?}");
        // One wake-up per tick, and the last one past the end.
        assert_eq!(wakeups, fired.len() + 1);
    }
}
