//! The worker: claims dispatched tenants, runs their remaining steps from the checkpoint with retries and timeouts, and keeps every active run moving.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::model::{RunSpec, RunState, TenantState, Trigger};
use super::queue::{Queue, TenantTask};
use super::retry::{backoff, jitter_unit};
use super::store::{Claim, RunStore, StoreError, now_ms};
use crate::config::RuntimeConfig;
use crate::engine::pools::Databases;
use crate::steps::{StepContext, StepError, execute};

/// Run specs cached per process; specs never change once written.
const SPEC_CACHE: usize = 256;

/// One process's runtime: the store, the queue, the database pools and its identity.
pub struct Runtime {
    pub store: RunStore,
    pub queue: Queue,
    pub databases: Arc<Databases>,
    pub settings: RuntimeConfig,
    pub base_dir: PathBuf,
    pub worker_id: String,
    specs: Mutex<HashMap<String, Arc<RunSpec>>>,
    /// Leases this process holds, and those whose handler was dropped (drain timeout)
    /// before it could finish: they are given back on the way out.
    leases: Arc<Mutex<Leases>>,
    /// Service definitions, for the steps that need more than the placement (migrations).
    services: std::collections::BTreeMap<String, crate::catalog::ServiceSpec>,
    /// Migration sets loaded per (run, service), checked against the run's snapshot.
    migration_sets: Mutex<HashMap<(String, String), Arc<crate::migrations::MigrationSet>>>,
}

#[derive(Default)]
struct Leases {
    held: HashMap<(String, String), String>,
    abandoned: Vec<(String, String, String)>,
}

/// Stops the lease heartbeat however the handler ends (finished, fenced, or dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes a lease from the held set when the handler ends; if the handler was dropped
/// mid-step (drain timeout), remembers it as abandoned.
struct LeaseGuard {
    leases: Arc<Mutex<Leases>>,
    key: (String, String),
    done: bool,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let mut leases = self.leases.lock().expect("lease registry");
        if let Some(holder) = leases.held.remove(&self.key)
            && !self.done
        {
            leases.abandoned.push((self.key.0.clone(), self.key.1.clone(), holder));
        }
    }
}

/// A process-unique worker id: host, pid and a random part. Replicas must never share one.
pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "host".to_string());
    format!("{host}-{}-{:06x}", std::process::id(), (jitter_unit() * 16_777_216.0) as u64)
}

impl Runtime {
    pub fn new(
        store: RunStore,
        queue: Queue,
        databases: Arc<Databases>,
        settings: RuntimeConfig,
        base_dir: PathBuf,
    ) -> Self {
        Self {
            store,
            queue,
            databases,
            settings,
            base_dir,
            worker_id: worker_id(),
            specs: Mutex::new(HashMap::new()),
            leases: Arc::new(Mutex::new(Leases::default())),
            services: Default::default(),
            migration_sets: Mutex::new(HashMap::new()),
        }
    }

    /// The service definitions of this process's configuration.
    pub fn with_services(mut self, services: std::collections::BTreeMap<String, crate::catalog::ServiceSpec>) -> Self {
        self.services = services;
        self
    }

    /// The migrations of `service` for `spec`'s run, loaded from this worker's files and
    /// checked against the run's snapshot.
    fn migration_set(&self, spec: &RunSpec, service: &str) -> Result<Arc<crate::migrations::MigrationSet>, StepError> {
        let key = (spec.id.clone(), service.to_string());
        if let Some(set) = self.migration_sets.lock().expect("migration cache").get(&key) {
            return Ok(set.clone());
        }
        let dir = self.services.get(service).and_then(|s| s.migrations.as_ref()).ok_or_else(|| {
            StepError::permanent(format!(
                "service {service} has no migrations directory in this worker's configuration"
            ))
        })?;
        let dir = if dir.is_absolute() { dir.clone() } else { self.base_dir.join(dir) };
        let set = crate::migrations::MigrationSet::load(&dir).map_err(|e| StepError::permanent(e.to_string()))?;
        let local: Vec<(String, String)> =
            set.migrations.iter().map(|m| (m.version.to_string(), m.up.checksum.clone())).collect();
        if let Some(expected) = spec.migrations.get(service)
            && expected != &local
        {
            return Err(StepError::permanent(format!(
                "this worker's migrations for service {service} ({}) differ from the ones the run was created with; deploy the same files to every worker and retry",
                dir.display()
            )));
        }
        let set = Arc::new(set);
        let mut cache = self.migration_sets.lock().expect("migration cache");
        if cache.len() >= SPEC_CACHE {
            cache.clear();
        }
        cache.insert(key, set.clone());
        Ok(set)
    }

    fn grace(&self) -> Duration {
        self.settings.dispatch_grace.0
    }

    async fn spec(&self, run: &str) -> Result<Arc<RunSpec>, StoreError> {
        if let Some(s) = self.specs.lock().expect("spec cache").get(run) {
            return Ok(s.clone());
        }
        let spec = Arc::new(self.store.spec(run).await?);
        let mut cache = self.specs.lock().expect("spec cache");
        if cache.len() >= SPEC_CACHE {
            cache.clear();
        }
        cache.insert(run.to_string(), spec.clone());
        Ok(spec)
    }

    /// Writes a new run and dispatches its first tenants.
    pub async fn start(&self, spec: RunSpec, trigger: &Trigger) -> Result<String, StoreError> {
        self.store.create(&spec, trigger, false).await?;
        let id = spec.id.clone();
        let spec = Arc::new(spec);
        self.specs.lock().expect("spec cache").insert(id.clone(), spec.clone());
        self.advance(&spec).await?;
        info!(run = %id, workflow = %spec.workflow, tenants = spec.tenants.len(), "run started");
        Ok(id)
    }

    /// Moves a run forward and pushes what it dispatched.
    pub async fn advance(&self, spec: &RunSpec) -> Result<String, StoreError> {
        let (state, dispatched) = self.store.advance(spec, self.grace()).await?;
        self.push(&spec.id, dispatched).await;
        Ok(state)
    }

    /// Pushes dispatched tenants to the queue. A failed push is not lost: the tenant is
    /// `queued` in its checkpoint and the sweep dispatches it again after the grace period.
    async fn push(&self, run: &str, dispatched: Vec<(String, u64)>) {
        if dispatched.is_empty() {
            return;
        }
        let now = now_ms();
        let tasks = dispatched
            .into_iter()
            .map(|(tenant, dispatch)| TenantTask { run_id: run.to_string(), tenant, dispatch, queued_at_ms: now })
            .collect();
        if let Err(e) = self.queue.push_many(tasks).await {
            warn!(run, error = %e, "could not push dispatched tenants; the sweep will dispatch them again");
        }
    }

    /// One pass over every active run: re-dispatch expired work, then advance (ends soaks,
    /// continues approved runs, finishes runs whose last tenants completed).
    pub async fn maintain(&self) -> Result<(), StoreError> {
        let active = self.store.active().await?;
        let mut records = Vec::with_capacity(active.len());
        for run in &active {
            match self.store.record(run).await {
                Ok(r) => records.push(r),
                Err(StoreError::NoSuchRun(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.promote_queued(&records).await?;
        for run in active {
            let spec = match self.spec(&run).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(run, error = %e, "cannot load run");
                    continue;
                }
            };
            let again = self.store.sweep(&run, self.grace()).await?;
            if !again.is_empty() {
                info!(run, tenants = again.len(), "dispatching again: lease or queue entry expired");
            }
            self.push(&run, again).await;
            self.advance(&spec).await?;
        }
        Ok(())
    }

    /// Starts runs that were queued behind an earlier run of their workflow (overlap =
    /// "queue") once no earlier run of that workflow is still going.
    async fn promote_queued(&self, records: &[super::model::RunRecord]) -> Result<(), StoreError> {
        for queued in records.iter().filter(|r| r.state == RunState::Queued) {
            let blocked = records.iter().any(|r| {
                r.workflow == queued.workflow
                    && r.id != queued.id
                    && !r.state.is_terminal()
                    && (r.state != RunState::Queued || r.created_ms < queued.created_ms)
            });
            if blocked {
                continue;
            }
            let spec = self.spec(&queued.id).await?;
            let to = if spec.waves.first().is_some_and(|w| w.approval) {
                RunState::AwaitingApproval
            } else {
                RunState::Running
            };
            match self.store.transition(&queued.id, "start", &[RunState::Queued], to, &[]).await {
                Ok(_) => {
                    info!(run = %queued.id, "queued run started: the previous run of its workflow ended");
                    self.advance(&spec).await?;
                }
                Err(StoreError::Refused { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The queue handler: work on one tenant of one run. Never fails: outcomes are
    /// recorded in the checkpoint, and infrastructure trouble leaves the tenant for the sweep.
    pub async fn handle(self: Arc<Self>, task: TenantTask) {
        if let Err(e) = self.handle_inner(&task).await {
            warn!(run = %task.run_id, tenant = %task.tenant, error = %e, "tenant left for the sweep");
        }
    }

    #[tracing::instrument(skip_all, fields(run = %task.run_id, tenant = %task.tenant))]
    async fn handle_inner(&self, task: &TenantTask) -> Result<(), StoreError> {
        let spec = self.spec(&task.run_id).await?;
        let Some(snapshot) = spec.tenants.get(&task.tenant) else { return Ok(()) };
        let lease = self.settings.lease.0;
        // The lease counts from before the claim was sent: a reply delayed by a stalled
        // Redis must not make this worker believe in a lease that has already run out.
        let claim_sent = tokio::time::Instant::now();
        let claim = self.store.claim(&task.run_id, &task.tenant, &self.worker_id, task.dispatch, lease).await?;
        let (holder, checkpoint) = match claim {
            Claim::Ok { holder, checkpoint } => (holder, checkpoint),
            Claim::Skip(why) => {
                debug!(why, "nothing to do");
                return Ok(());
            }
            Claim::Stopped(state) => {
                let outcome = if state == RunState::Cancelled { TenantState::Cancelled } else { TenantState::Skipped };
                let patch = serde_json::json!({});
                self.store.finish(&task.run_id, &task.tenant, None, outcome, None, &snapshot.group, &patch).await?;
                return Ok(());
            }
        };

        if claim_sent.elapsed() >= lease {
            warn!("the claim's reply came after the lease had run out; leaving the tenant to the sweep");
            return Ok(());
        }
        let key = (task.run_id.clone(), task.tenant.clone());
        self.leases.lock().expect("lease registry").held.insert(key.clone(), holder.clone());
        let mut guard = LeaseGuard { leases: self.leases.clone(), key, done: false };

        // Renew the lease while we work. The lease is ours only until `valid_until` (from
        // when the last successful renewal was *sent*); a renewal that fails, hangs past
        // that point, or finds the lease taken cancels the work: from then on another
        // worker may own the tenant, and everything this one writes is fenced off.
        let lost = CancellationToken::new();
        let _heartbeat = {
            let store = self.store.clone();
            let (run, tenant, holder, lost) = (task.run_id.clone(), task.tenant.clone(), holder.clone(), lost.clone());
            AbortOnDrop(tokio::spawn(async move {
                let mut valid_until = claim_sent + lease;
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let sent = tokio::time::Instant::now();
                    if sent >= valid_until {
                        lost.cancel();
                        break;
                    }
                    match tokio::time::timeout_at(valid_until, store.renew(&run, &tenant, &holder, lease)).await {
                        Ok(Ok(true)) => valid_until = sent + lease,
                        Ok(Ok(false)) | Err(_) => {
                            lost.cancel();
                            break;
                        }
                        Ok(Err(e)) => debug!(error = %e, "lease renewal failed; retrying until the lease runs out"),
                    }
                }
            }))
        };
        let result = self.run_units(&spec, task, &holder, *checkpoint, &lost).await;
        guard.done = true;
        let outcome = result?;
        if let Some((state, error, patch)) = outcome
            && self.finish_retrying(task, &holder, state, error.as_deref(), &snapshot.group, &patch).await?
        {
            self.advance(&spec).await?;
        }
        Ok(())
    }

    /// Runs the tenant's units from the checkpoint. Returns the outcome to record, or None
    /// when the lease was lost (another worker owns the tenant now).
    async fn run_units(
        &self,
        spec: &RunSpec,
        task: &TenantTask,
        holder: &str,
        checkpoint: super::model::Checkpoint,
        lost: &CancellationToken,
    ) -> Result<Option<(TenantState, Option<String>, serde_json::Value)>, StoreError> {
        let snapshot = &spec.tenants[&task.tenant];
        let max_attempts = spec.retry.attempts.max(1);
        if checkpoint.lost >= max_attempts {
            let error = format!("worker lost {} times while running this tenant; giving up", checkpoint.lost);
            return Ok(Some((TenantState::Failed, Some(error), serde_json::json!({}))));
        }
        let mut unit = checkpoint.unit;
        let mut attempt = checkpoint.attempt;
        while unit < snapshot.units.len() {
            let u = &snapshot.units[unit];
            let step = &spec.steps[u.step];
            let label = format!("{}/{}", step.label(), u.service);
            let Some(placement) = snapshot.placements.get(&u.service) else {
                let error = format!("step {label}: no placement for service {}", u.service);
                return Ok(Some((TenantState::Failed, Some(error), serde_json::json!({}))));
            };
            attempt += 1;
            let migrations = if matches!(step.kind, crate::steps::StepKind::Migrate | crate::steps::StepKind::Provision)
            {
                match self.migration_set(spec, &u.service) {
                    Ok(set) => Some(set),
                    Err(e) => {
                        let error = format!("step {label}: {e}");
                        return Ok(Some((TenantState::Failed, Some(error), serde_json::json!({}))));
                    }
                }
            } else {
                None
            };
            let ctx = StepContext {
                migrations: migrations.as_deref(),
                service: self.services.get(&u.service),
                run: &spec.id,
                root_run: spec.receipt_run.as_deref(),
                tenant: &task.tenant,
                unit: &label,
                step,
                placement,
                databases: &self.databases,
                base_dir: &self.base_dir,
            };
            let timeout = step.timeout.unwrap_or(spec.timeout).0;
            let result = tokio::select! {
                r = tokio::time::timeout(timeout, execute(&ctx)) => r
                    .unwrap_or_else(|_| Err(StepError::transient(format!("timed out after {}", humantime::format_duration(timeout))))),
                () = lost.cancelled() => return Ok(None),
            };
            match result {
                Ok(output) => {
                    let last = unit + 1 == snapshot.units.len();
                    let patch = serde_json::json!({ "unit": unit + 1, "attempt": 0, "outputs": { label.clone(): super::model::output_text(&output) } });
                    if last {
                        return Ok(Some((TenantState::Succeeded, None, patch)));
                    }
                    match self.store.progress(&task.run_id, &task.tenant, holder, &patch).await? {
                        None => return Ok(None),
                        Some(RunState::Cancelled) => {
                            return Ok(Some((TenantState::Cancelled, None, serde_json::json!({}))));
                        }
                        Some(_) => {}
                    }
                    unit += 1;
                    attempt = 0;
                }
                Err(e) if e.allows_attempt(attempt + 1, max_attempts) => {
                    let delay = backoff(&spec.retry, attempt + 1, jitter_unit());
                    let message =
                        format!("step {label}, attempt {attempt} of {max_attempts}: {e}; retrying in {delay:.1?}");
                    info!(%message);
                    let patch = serde_json::json!({ "attempt": attempt, "last_error": message });
                    if self.store.progress(&task.run_id, &task.tenant, holder, &patch).await?.is_none() {
                        return Ok(None);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = lost.cancelled() => return Ok(None),
                    }
                }
                Err(e) => {
                    let kind = if e.is_transient() { "gave up" } else { "permanent error" };
                    let error = format!("step {label}, attempt {attempt} of {max_attempts} ({kind}): {e}");
                    return Ok(Some((TenantState::Failed, Some(error), serde_json::json!({ "attempt": attempt }))));
                }
            }
        }
        Ok(Some((TenantState::Succeeded, None, serde_json::json!({}))))
    }

    /// Records the outcome, retrying while Redis is unreachable (up to the lease: after
    /// that another worker owns the tenant and the receipt makes its retry a no-op).
    async fn finish_retrying(
        &self,
        task: &TenantTask,
        holder: &str,
        state: TenantState,
        error: Option<&str>,
        group: &str,
        patch: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + self.settings.lease.0;
        loop {
            match self.store.finish(&task.run_id, &task.tenant, Some(holder), state, error, group, patch).await {
                Ok(ok) => return Ok(ok),
                Err(StoreError::Redis(e)) if tokio::time::Instant::now() < deadline => {
                    debug!(error = %e, "finish failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs the worker until `shutdown`: the queue consumer and the maintenance loop.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), super::queue::QueueError> {
        let maintenance = {
            let rt = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(rt.settings.sweep_interval.0);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = shutdown.cancelled() => break,
                    }
                    if let Err(e) = rt.maintain().await {
                        warn!(error = %e, "maintenance pass failed; retrying");
                    }
                }
            })
        };
        let rt = self.clone();
        let handler = move |task: TenantTask| {
            let rt = rt.clone();
            async move { rt.handle(task).await }
        };
        let result = super::queue::run_worker(
            &self.queue,
            &self.worker_id,
            self.settings.worker_concurrency as usize,
            handler,
            shutdown.clone(),
            self.settings.drain_timeout.0,
        )
        .await;
        shutdown.cancel();
        let _ = maintenance.await;
        self.give_back_leases().await;
        result
    }

    /// Gives back the leases of handlers dropped at the drain timeout, so other workers
    /// resume those tenants now instead of after the lease expires.
    async fn give_back_leases(&self) {
        let abandoned = std::mem::take(&mut self.leases.lock().expect("lease registry").abandoned);
        for (run, tenant, holder) in abandoned {
            match self.store.release(&run, &tenant, &holder).await {
                Ok(true) => info!(run, tenant, "lease given back at shutdown; another worker resumes the tenant"),
                Ok(false) => {}
                Err(e) => warn!(run, tenant, error = %e, "could not give the lease back; it expires by itself"),
            }
        }
    }
}
