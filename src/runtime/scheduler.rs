//! The scheduler: fires each scheduled workflow at its cron ticks in its time zone, once per tick across all replicas, with the overlap and catch-up policies.
//!
//! Tick times come from [`Schedule`] (croner evaluated in the workflow's zone, so DST moves
//! ticks correctly). tokio-cron-scheduler was considered and not used: its `_tz` jobs fix
//! the UTC offset once when the job is created (ticks drift by an hour across a DST change)
//! and it parses with day-of-month AND day-of-week, unlike the cron semantics `validate`
//! checks. Every replica runs this loop; `SET NX` on the tick key lets exactly one of them
//! enqueue each tick.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::launch;
use super::model::{RunState, Trigger};
use super::worker::Runtime;
use crate::catalog::Catalog;
use crate::config::LoadedConfig;
use crate::workflow::{CatchUp, Overlap, Schedule, Workflow};

/// How long a tick's "already enqueued" marker is kept: long enough that no replica with a
/// sane clock could still be about to fire it.
const TICK_MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Resolves the catalog afresh for each tick (the tenant list changes between nights).
pub type CatalogLoader =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Catalog, String>> + Send>> + Send + Sync>;

/// What every workflow loop needs.
#[derive(Clone)]
pub struct Context {
    pub config: Arc<LoadedConfig>,
    pub catalog: CatalogLoader,
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
    let last_key = runtime.store.keys().last_tick(&wf.name);
    // Catch-up: ticks that passed while no scheduler ran.
    match runtime.store.get_string(&last_key).await {
        Ok(Some(last)) => {
            if let Some(missed) = latest_missed(&schedule, last.parse().unwrap_or_default(), Utc::now()) {
                match wf.spec.catch_up {
                    CatchUp::Latest => {
                        info!(workflow = %wf.name, tick = %missed, "catching up: one run for the ticks missed while down");
                        fire(&runtime, &ctx, &wf, missed).await;
                    }
                    CatchUp::None => {
                        info!(workflow = %wf.name, "ticks were missed while down; catch_up = none skips them");
                        let _ = runtime.store.set_string(&last_key, &missed.timestamp_millis().to_string()).await;
                    }
                }
            }
        }
        Ok(None) => {}
        Err(e) => warn!(workflow = %wf.name, error = %e, "cannot read the last tick; no catch-up"),
    }
    loop {
        let Some(next) = schedule.next_after(Utc::now()) else { return };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        fire(&runtime, &ctx, &wf, next).await;
    }
}

/// The newest tick after `last_ms` and not after `now`, if any was missed.
fn latest_missed(schedule: &Schedule, last_ms: i64, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut t = schedule.next_after(DateTime::from_timestamp_millis(last_ms)?)?;
    if t > now {
        return None;
    }
    // Bounded walk: a per-second schedule down for a day is 86,400 steps; cap it and jump.
    for _ in 0..100_000 {
        match schedule.next_after(t) {
            Some(n) if n <= now => t = n,
            _ => return Some(t),
        }
    }
    Some(t)
}

/// Enqueues one tick, once across replicas, honouring the overlap policy.
async fn fire(runtime: &Runtime, ctx: &Context, wf: &Workflow, tick: DateTime<Utc>) {
    let tick_ms = tick.timestamp_millis();
    let keys = runtime.store.keys();
    match runtime.store.set_once(&keys.tick(&wf.name, tick_ms), &runtime.worker_id, TICK_MARKER_TTL).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            warn!(workflow = %wf.name, error = %e, "cannot mark the tick; skipping it rather than risk running it twice");
            return;
        }
    }
    let _ = runtime.store.set_string(&keys.last_tick(&wf.name), &tick_ms.to_string()).await;
    if let Err(e) = enqueue(runtime, ctx, wf, tick_ms).await {
        warn!(workflow = %wf.name, tick = %tick, error = %e, "scheduled run not started");
    }
}

async fn enqueue(runtime: &Runtime, ctx: &Context, wf: &Workflow, tick_ms: i64) -> Result<(), String> {
    let mut previous_running = false;
    for id in runtime.store.active().await.map_err(|e| e.to_string())? {
        if let Ok(r) = runtime.store.record(&id).await
            && r.workflow == wf.name
            && !r.state.is_terminal()
        {
            previous_running = true;
        }
    }
    let queued = match (previous_running, wf.spec.overlap) {
        (false, _) => false,
        (true, Overlap::Queue) => true,
        (true, Overlap::Skip) => {
            info!(workflow = %wf.name, "tick skipped: the previous run is still going (overlap = skip)");
            return Ok(());
        }
    };
    let catalog = (ctx.catalog)().await?;
    let mut spec = launch::snapshot(wf, &catalog, &ctx.config, &[]);
    launch::skip_up_to_date(&mut spec, &catalog, &ctx.config).await;
    if spec.tenants.is_empty() {
        info!(workflow = %wf.name, "tick: no tenant selected; nothing to run");
        return Ok(());
    }
    let trigger = Trigger::Schedule { tick_ms };
    if queued {
        runtime.store.create(&spec, &trigger, true).await.map_err(|e| e.to_string())?;
        info!(workflow = %wf.name, run = %spec.id, "tick queued behind the previous run (overlap = queue)");
    } else {
        let id = runtime.start(spec, &trigger).await.map_err(|e| e.to_string())?;
        info!(workflow = %wf.name, run = %id, state = %RunState::Running, "scheduled run started");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_missed_tick() {
        let s = Schedule::parse("0 * * * *", None).unwrap();
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        let last = at("2026-01-01T10:00:00Z").timestamp_millis();
        assert_eq!(latest_missed(&s, last, at("2026-01-01T10:30:00Z")), None);
        assert_eq!(latest_missed(&s, last, at("2026-01-01T13:30:00Z")), Some(at("2026-01-01T13:00:00Z")));
    }
}
