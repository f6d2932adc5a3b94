//! The worker: claims dispatched tenants, runs their remaining steps from the checkpoint with retries and timeouts, and keeps every active run moving.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::fence::Fence;
use super::model::{RunSpec, RunState, TenantState, Trigger};
use super::queue::{Queue, TenantTask};
use super::retry::{backoff, jitter_unit};
use super::store::{Claim, Renewal, RunStore, StoreError, now_ms};
use crate::config::RuntimeConfig;
use crate::engine::pools::Databases;
use crate::steps::{StepContext, StepError, execute};

/// Run specs cached per process; specs never change once written. A spec holds the run's
/// whole tenant snapshot (about 1 KiB per tenant in memory), so only active runs are kept:
/// [`Runtime::forget_finished`] drops the others, and this bounds the active ones.
const SPEC_CACHE: usize = 256;

/// One process's runtime: the store, the queue, the database pools and its identity.
pub struct Runtime {
    pub store: RunStore,
    pub queue: Queue,
    pub databases: Arc<Databases>,
    pub settings: RuntimeConfig,
    pub base_dir: PathBuf,
    pub worker_id: String,
    /// Run specs, loaded once per run however many handlers ask at the same time (a cold
    /// worker picking up a large run must not parse its spec once per in-flight task).
    specs: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<RunSpec>>>>>,
    /// Leases this process holds, and those whose handler was dropped (drain timeout)
    /// before it could finish: they are given back on the way out.
    leases: Arc<Mutex<Leases>>,
    /// Cancelled when the process starts to drain: handlers stop taking tenants inline.
    stopping: CancellationToken,
    /// Service definitions, for the steps that need more than the placement (migrations).
    services: std::collections::BTreeMap<String, crate::catalog::ServiceSpec>,
    /// The object store of `[storage]` (backups), when configured.
    objects: Option<Arc<crate::storage::ObjectStore>>,
    /// `[backups]`: the freshness limits a `health` step checks backups against.
    backup_limits: crate::config::BackupsConfig,
    /// The RDS API of `[rds]`, opened when a step first uses it.
    rds: Arc<crate::rds::Rds>,
    /// Migration sets loaded per (run, service), checked against the run's snapshot.
    migration_sets: Mutex<HashMap<(String, String), Arc<crate::migrations::MigrationSet>>>,
}

#[derive(Default)]
struct Leases {
    /// (run, tenant) -> the nonce of the claim.
    held: HashMap<(String, String), String>,
    /// (run, tenant, claim nonce) of handlers dropped before they finished.
    abandoned: Vec<(String, String, String)>,
}

/// What a check of the host's load before a unit decided (see `Runtime::check_load`).
enum Load {
    Go,
    /// Given back to pending until the host is under its limits.
    Deferred,
    Lost,
    Paused,
    Cancelled,
    /// Waited past `max_wait`: why.
    TooLong(String),
}

/// A tenant's waits for its host's load: since when it waits now, and the total before.
struct Waited {
    since: Option<i64>,
    total: u64,
}

/// How a tenant's turn on this worker ended.
enum Ending {
    /// Record this outcome (and checkpoint patch).
    Finish(TenantState, Option<String>, serde_json::Value),
    /// The lease is gone (another worker owns the tenant, or the run was cancelled).
    Lost,
    /// The run was paused between two units: give the tenant back to wait for `resume`.
    Paused,
    /// Given back to pending for its host's load (the store did it): dispatch others.
    Deferred,
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
        if let Some(nonce) = leases.held.remove(&self.key)
            && !self.done
        {
            leases.abandoned.push((self.key.0.clone(), self.key.1.clone(), nonce));
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
            stopping: CancellationToken::new(),
            services: Default::default(),
            objects: None,
            backup_limits: Default::default(),
            rds: Arc::new(crate::rds::Rds::new(None)),
            migration_sets: Mutex::new(HashMap::new()),
        }
    }

    /// The service definitions of this process's configuration.
    pub fn with_services(mut self, services: std::collections::BTreeMap<String, crate::catalog::ServiceSpec>) -> Self {
        self.services = services;
        self
    }

    /// The object store the steps write backups to, and how fresh those must be.
    pub fn with_objects(
        mut self,
        objects: Option<Arc<crate::storage::ObjectStore>>,
        limits: crate::config::BackupsConfig,
    ) -> Self {
        self.objects = objects;
        self.backup_limits = limits;
        self
    }

    /// The RDS API the managed-instance steps call.
    pub fn with_rds(mut self, rds: Arc<crate::rds::Rds>) -> Self {
        self.rds = rds;
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
        let cell = {
            let mut cache = self.specs.lock().expect("spec cache");
            if !cache.contains_key(run) && cache.len() >= SPEC_CACHE {
                cache.clear();
            }
            cache.entry(run.to_string()).or_default().clone()
        };
        cell.get_or_try_init(|| async { self.store.spec(run).await.map(Arc::new) }).await.cloned()
    }

    /// Writes a new run and dispatches its first tenants.
    pub async fn start(&self, spec: RunSpec, trigger: &Trigger) -> Result<String, StoreError> {
        self.store.create(&spec, trigger, false).await?;
        let id = spec.id.clone();
        let spec = Arc::new(spec);
        let cell = Arc::new(tokio::sync::OnceCell::new_with(Some(spec.clone())));
        self.specs.lock().expect("spec cache").insert(id.clone(), cell);
        self.advance(&spec).await?;
        info!(run = %id, workflow = %spec.workflow, tenants = spec.tenants.len(), "run started");
        Ok(id)
    }

    /// Moves a run forward and pushes what it dispatched.
    pub async fn advance(&self, spec: &RunSpec) -> Result<String, StoreError> {
        let (state, dispatched) = self.store.advance(spec, self.grace()).await?;
        self.push(&spec.id, dispatched).await;
        if spec.report.is_some() && RunState::parse(&state).is_some_and(RunState::is_terminal) {
            self.conclude(spec).await?;
        }
        Ok(state)
    }

    /// The object store of this process's configuration, if it has one.
    pub fn objects(&self) -> Option<&crate::storage::ObjectStore> {
        self.objects.as_deref()
    }

    /// The last thing that happens to a finished run whose workflow asks for a report: the
    /// report is written (see [`super::report`]), then the run leaves the active set. Until
    /// then it stays there, so that when this process dies first, the maintenance pass of
    /// any worker does it; doing it twice writes the same report. A store that is down
    /// leaves the run for the next pass; a problem that waiting does not mend (no
    /// `[storage]`, a refused write) is noted in the run's record, and the run retired
    /// without its report.
    pub async fn conclude(&self, spec: &RunSpec) -> Result<(), StoreError> {
        if spec.report.is_some() {
            // Redis being away is this pass's problem, not the report's: `?`.
            let record = self.store.record(&spec.id).await?;
            let checkpoints = self.store.checkpoints(&spec.id).await?;
            match self.write_report(spec, &record, &checkpoints).await {
                Ok(Some(written)) => info!(run = %spec.id, key = written, "run report written"),
                Ok(None) => return Ok(()),
                Err(message) => {
                    warn!(run = %spec.id, error = %message, "the run's report cannot be written");
                    self.store.note_report_error(&spec.id, &message).await?;
                }
            }
        }
        self.store.retire(&spec.id).await
    }

    /// Writes the run's report (its workflow's `report` kind): `Ok(Some(key))` when it is stored, `Ok(None)` when the
    /// store failed in a way that may pass (the run stays for the next pass), `Err` when
    /// trying again cannot help.
    async fn write_report(
        &self,
        spec: &RunSpec,
        record: &super::model::RunRecord,
        checkpoints: &std::collections::BTreeMap<String, super::model::Checkpoint>,
    ) -> Result<Option<String>, String> {
        let Some(store) = self.objects.as_deref() else {
            return Err("the worker's config has no [storage] to write the run's report to".to_string());
        };
        let stored = match spec.report {
            Some(crate::workflow::ReportKind::Run) => {
                super::run_report::store(store, &super::run_report::build(spec, record, checkpoints)).await
            }
            _ => {
                let verdicts = super::report::failed_verdicts(store, spec, checkpoints).await;
                let report = super::report::build(spec, record, checkpoints, &verdicts);
                super::report::store(store, &report).await.map(|_| super::report::keys(&spec.workflow, &spec.id).0)
            }
        };
        match stored {
            Ok(key) => Ok(Some(key)),
            Err(e) if e.transient => {
                warn!(run = %spec.id, error = %e, "writing the run's report failed; the next maintenance pass tries again");
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// A name for one claim attempt, unique across processes and attempts.
    fn claim_nonce(&self) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("{}#{}", self.worker_id, NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Moves a run forward after one of its tenants finished; returns one dispatched tenant
    /// for the calling handler to run itself (none while the worker drains) and pushes the rest.
    async fn advance_taking_one(&self, spec: &RunSpec) -> Result<Option<TenantTask>, StoreError> {
        let (state, mut dispatched) = self.store.advance(spec, self.grace()).await?;
        if RunState::parse(&state).is_some_and(RunState::is_terminal) {
            if spec.report.is_some() {
                self.conclude(spec).await?;
            }
            self.forget(&spec.id);
        }
        let own = if self.stopping.is_cancelled() || dispatched.is_empty() { None } else { Some(dispatched.remove(0)) };
        self.push(&spec.id, dispatched).await;
        Ok(own.map(|(tenant, dispatch)| TenantTask::new(spec.id.clone(), tenant, dispatch)))
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

    /// Drops what this process cached for a run (its spec with the tenant snapshot, its
    /// migration sets). Handlers still working on the run keep their own reference; a late
    /// queue entry of the run loads the spec again.
    fn forget(&self, run: &str) {
        self.specs.lock().expect("spec cache").remove(run);
        self.migration_sets.lock().expect("migration cache").retain(|(r, _), _| r != run);
    }

    /// Drops the cached specs and migration sets of runs that are no longer active (ended
    /// while another worker advanced them, or removed), so a long-lived worker's memory
    /// follows the runs in progress, not every run it has seen.
    fn forget_finished(&self, active: &[String]) {
        let active: std::collections::HashSet<&str> = active.iter().map(String::as_str).collect();
        self.specs.lock().expect("spec cache").retain(|run, _| active.contains(run.as_str()));
        self.migration_sets.lock().expect("migration cache").retain(|(run, _), _| active.contains(run.as_str()));
    }

    /// One pass over every active run: re-dispatch expired work, then advance (ends soaks,
    /// continues approved runs, finishes runs whose last tenants completed).
    pub async fn maintain(&self) -> Result<(), StoreError> {
        let active = self.store.active().await?;
        self.forget_finished(&active);
        let mut records = Vec::with_capacity(active.len());
        for run in &active {
            match self.store.record(run).await {
                // Ended, but the process that ended it died before it left the active set
                // (or before it wrote the run's report), or an operator ended it.
                Ok(r) if r.state.is_terminal() => match self.spec(run).await {
                    Ok(spec) => self.conclude(&spec).await?,
                    Err(StoreError::NoSuchRun(_)) => self.store.retire(run).await?,
                    Err(e) => return Err(e),
                },
                Ok(r) => records.push(r),
                Err(StoreError::NoSuchRun(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.promote_queued(&records).await?;
        for run in records.into_iter().map(|r| r.id) {
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

    /// Removes finished runs past `runtime.keep_runs` / `runtime.keep_runs_for`; one process
    /// per `prune_interval` does it.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let interval = self.settings.prune_interval.0;
        let lock = self.store.keys().prune_lock();
        if !self.store.set_once(&lock, &self.worker_id, interval.max(Duration::from_millis(100))).await? {
            return Ok(0);
        }
        let older_than = now_ms() - self.settings.keep_runs_for.0.as_millis() as i64;
        let abandoned = now_ms() - super::store::ABANDONED_AFTER.as_millis() as i64;
        let removed = self.store.prune_finished(self.settings.keep_runs as usize, older_than, abandoned).await?;
        if removed > 0 {
            info!(removed, "removed finished runs past their retention");
        }
        Ok(removed)
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
        // A finished tenant frees a slot; the next tenant it dispatches is run right here
        // rather than through the queue, so the slot does not sit idle for a queue round
        // trip (the rest go to the queue for any worker).
        let mut next = Some(task);
        while let Some(task) = next.take() {
            match self.handle_inner(&task).await {
                Ok(following) => next = following,
                Err(e) => warn!(run = %task.run_id, tenant = %task.tenant, error = %e, "tenant left for the sweep"),
            }
        }
    }

    #[tracing::instrument(skip_all, fields(run = %task.run_id, tenant = %task.tenant))]
    async fn handle_inner(&self, task: &TenantTask) -> Result<Option<TenantTask>, StoreError> {
        let spec = self.spec(&task.run_id).await?;
        let Some(snapshot) = spec.tenants.get(&task.tenant) else { return Ok(None) };
        let lease = self.settings.lease.0;
        // The lease counts from before the claim was sent: a reply delayed by a stalled
        // Redis must not make this worker believe in a lease that has already run out.
        let claim_sent = tokio::time::Instant::now();
        let nonce = self.claim_nonce();
        let claim = match self
            .store
            .claim(&task.run_id, &task.tenant, snapshot, &self.worker_id, task.dispatch, lease, &nonce)
            .await
        {
            Ok(claim) => claim,
            Err(e @ StoreError::Redis(_)) => {
                // The claim may have happened without its reply reaching us.
                self.give_back_when_redis_returns(task, &nonce);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let (holder, checkpoint) = match claim {
            Claim::Ok { holder, checkpoint } => (holder, checkpoint),
            Claim::Skip(why) => {
                debug!(why, "nothing to do");
                return Ok(None);
            }
            Claim::Held => {
                debug!("run paused or wave not approved: the tenant waits in its pending list");
                return Ok(None);
            }
            Claim::Stopped(state) => {
                let outcome = if state == RunState::Cancelled { TenantState::Cancelled } else { TenantState::Skipped };
                let patch = serde_json::json!({});
                self.store.finish(&task.run_id, &task.tenant, None, outcome, None, snapshot, &patch).await?;
                return Ok(None);
            }
        };

        if claim_sent.elapsed() >= lease {
            warn!("the claim's reply came after the lease had run out; giving the tenant back");
            self.give_back_when_redis_returns(task, &nonce);
            return Ok(None);
        }
        let key = (task.run_id.clone(), task.tenant.clone());
        self.leases.lock().expect("lease registry").held.insert(key.clone(), nonce.clone());
        let mut guard = LeaseGuard { leases: self.leases.clone(), key, done: false };

        // Renew the lease while we work. The lease is ours only until `valid_until` (from
        // when the last successful renewal was *sent*); a renewal that fails, hangs past
        // that point, or finds the lease taken cancels the work: from then on another
        // worker may own the tenant, and everything this one writes is fenced off.
        let lost = CancellationToken::new();
        // Set when the lease ran out because Redis could not be reached (not because another
        // worker took it): this worker is alive, and gives the tenant back once Redis returns.
        let cut_off = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let _heartbeat = {
            let store = self.store.clone();
            let (run, tenant, holder, lost) = (task.run_id.clone(), task.tenant.clone(), holder.clone(), lost.clone());
            let cut_off = cut_off.clone();
            AbortOnDrop(tokio::spawn(async move {
                let mut valid_until = claim_sent + lease;
                let mut renewal_failed = false;
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let sent = tokio::time::Instant::now();
                    if sent >= valid_until {
                        // Past the lease. Cut off only if renewals failed; a heartbeat that
                        // merely woke late means this process stalled (paused VM, blocked
                        // runtime), which is charged like a vanished worker.
                        cut_off.store(renewal_failed, std::sync::atomic::Ordering::SeqCst);
                        lost.cancel();
                        break;
                    }
                    match tokio::time::timeout_at(valid_until, store.renew(&run, &tenant, &holder, lease)).await {
                        Ok(Ok(Renewal::Held)) => {
                            valid_until = sent + lease;
                            renewal_failed = false;
                        }
                        Ok(Ok(Renewal::Cancelled)) => {
                            info!(run, tenant, "run cancelled: stopping the step");
                            lost.cancel();
                            break;
                        }
                        Ok(Ok(Renewal::Lost)) => {
                            lost.cancel();
                            break;
                        }
                        Err(_) => {
                            cut_off.store(true, std::sync::atomic::Ordering::SeqCst);
                            lost.cancel();
                            break;
                        }
                        Ok(Err(e)) => {
                            renewal_failed = true;
                            debug!(error = %e, "lease renewal failed; retrying until the lease runs out")
                        }
                    }
                }
            }))
        };
        let fence = Fence::new(self.store.clone(), &task.run_id, &task.tenant, &holder, lost.clone());
        let result = self.run_units(&spec, task, &holder, *checkpoint, &fence, &lost).await;
        guard.done = true;
        let finished = match result {
            Ok(Ending::Finish(state, error, patch)) => {
                self.finish_retrying(task, &holder, state, error.as_deref(), snapshot, &patch).await.map(Some)
            }
            Ok(Ending::Paused) => {
                // Back to the queue, where the claim holds it in its pending list until
                // `resume`. Not a lost worker, not an attempt.
                drop(_heartbeat);
                if let Some(dispatch) = self.store.release(&task.run_id, &task.tenant, &nonce, self.grace()).await? {
                    self.push(&task.run_id, vec![(task.tenant.clone(), dispatch)]).await;
                }
                return Ok(None);
            }
            Ok(Ending::Lost) => Ok(None),
            Ok(Ending::Deferred) => {
                // Its slots are free: other hosts' tenants take them now.
                drop(_heartbeat);
                return self.advance_taking_one(&spec).await;
            }
            Err(e) => Err(e),
        };
        match finished {
            Ok(Some(true)) => return self.advance_taking_one(&spec).await,
            // Fenced, or the lease went to another worker, or the run was cancelled.
            Ok(Some(false) | None) if !cut_off.load(std::sync::atomic::Ordering::SeqCst) => {}
            // Cut off from Redis past the lease (the finish, if any, then found the lease
            // gone): not a vanished worker.
            Ok(Some(false) | None) | Err(StoreError::Redis(_)) => self.give_back_when_redis_returns(task, &nonce),
            Err(e) => return Err(e),
        }
        Ok(None)
    }

    /// In the background, gives back a claim this worker lost only because Redis was
    /// unreachable, once Redis answers again (bounded: after `GIVE_BACK_FOR` the sweep's
    /// accounting stands). The claim is named by its nonce (its reply may never have
    /// arrived). The step's abandoned database sessions are stopped first, so the tenant is
    /// not handed to another worker while its old statement still runs.
    fn give_back_when_redis_returns(&self, task: &TenantTask, nonce: &str) {
        const GIVE_BACK_FOR: Duration = Duration::from_secs(300);
        let (store, queue, grace, databases) =
            (self.store.clone(), self.queue.clone(), self.grace(), self.databases.clone());
        let (run, tenant, nonce) = (task.run_id.clone(), task.tenant.clone(), nonce.to_string());
        tokio::spawn(async move {
            if !databases.settle_cleanup(Duration::from_secs(15)).await {
                warn!(
                    run,
                    tenant, "a stopped step's statement could not be confirmed stopped; its lease is left to expire"
                );
                return;
            }
            let deadline = tokio::time::Instant::now() + GIVE_BACK_FOR;
            while tokio::time::Instant::now() < deadline {
                match store.release(&run, &tenant, &nonce, grace).await {
                    Ok(Some(dispatch)) => {
                        info!(run, tenant, "a claim lost to a Redis outage was given back; the tenant is queued again");
                        let _ = queue.push(TenantTask::new(run.clone(), tenant.clone(), dispatch)).await;
                        return;
                    }
                    Ok(None) => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        });
    }

    /// Runs the tenant's units from the checkpoint. Returns the outcome to record, or None
    /// when the lease was lost (another worker owns the tenant now).
    async fn run_units(
        &self,
        spec: &RunSpec,
        task: &TenantTask,
        holder: &str,
        checkpoint: super::model::Checkpoint,
        fence: &Fence,
        lost: &CancellationToken,
    ) -> Result<Ending, StoreError> {
        let snapshot = &spec.tenants[&task.tenant];
        let max_attempts = spec.retry.attempts.max(1);
        // Workers that vanished while holding this tenant (killed, crashed, partitioned)
        // have their own, larger budget: a deploy or an OOM kill is not the tenant's fault,
        // but a tenant that takes down every worker that runs it must stop somewhere.
        let max_lost = spec.retry.lost_leases.max(1);
        if checkpoint.lost >= max_lost {
            let error = format!(
                "worker lost {} times while running this tenant (retry.lost_leases = {max_lost}); giving up: check the worker logs for a crash or an out-of-memory kill at this tenant",
                checkpoint.lost
            );
            return Ok(Ending::Finish(TenantState::Failed, Some(error), serde_json::json!({})));
        }
        let mut unit = checkpoint.unit;
        let mut attempt = checkpoint.attempt;
        let mut waited = Waited { since: checkpoint.throttled_since_ms, total: checkpoint.throttled_ms };
        while unit < snapshot.units.len() {
            let u = &snapshot.units[unit];
            let step = &spec.steps[u.step];
            let label = super::model::unit_label(step, &u.service);
            let Some(placement) = snapshot.placements.get(&u.service) else {
                let error = format!("step {label}: no placement for service {}", u.service);
                return Ok(Ending::Finish(TenantState::Failed, Some(error), serde_json::json!({})));
            };
            if let Some(throttle) = &spec.throttle {
                match self.check_load(throttle, spec, task, holder, &placement.host, &mut waited, lost).await? {
                    Load::Go => {}
                    Load::Deferred => return Ok(Ending::Deferred),
                    Load::Lost => return Ok(Ending::Lost),
                    Load::Paused => return Ok(Ending::Paused),
                    Load::Cancelled => {
                        return Ok(Ending::Finish(TenantState::Cancelled, None, serde_json::json!({})));
                    }
                    Load::TooLong(error) => {
                        let error = format!("step {label}: {error}");
                        let patch = serde_json::json!({ "throttled": null, "throttled_since_ms": null });
                        return Ok(Ending::Finish(TenantState::Failed, Some(error), patch));
                    }
                }
            }
            attempt += 1;
            let stop = lost.child_token();
            let migrations = if matches!(step.kind, crate::steps::StepKind::Migrate | crate::steps::StepKind::Provision)
            {
                match self.migration_set(spec, &u.service) {
                    Ok(set) => Some(set),
                    Err(e) => {
                        let error = format!("step {label}: {e}");
                        return Ok(Ending::Finish(TenantState::Failed, Some(error), serde_json::json!({})));
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
                labels: &snapshot.labels,
                unit: &label,
                step,
                placement,
                databases: &self.databases,
                base_dir: &self.base_dir,
                cancel: &stop,
                fence,
                throttle: spec.throttle.as_ref(),
                objects: self.objects.as_deref(),
                backup_limits: &self.backup_limits,
                rds: Some(self.rds.as_ref()),
                clock: &crate::runtime::clock::SystemClock,
                timezone: spec.zone(),
            };
            let timeout = step.timeout.unwrap_or(spec.timeout).0;
            // A unit that its step's plan left out of the run (outside a sample) is recorded
            // as skipped, with the plan's reason, without running.
            let result = if let Some(reason) = &u.skip {
                Ok(serde_json::json!({ "skipped": reason }))
            } else {
                // Whichever comes first ends the step: its result, its timeout, or the loss
                // of the lease (which includes a cancelled run). On the last two the step's
                // future is dropped, and its database sessions stop their statements
                // (PgSession).
                tokio::select! {
                    r = execute(&ctx) => r,
                    () = tokio::time::sleep(timeout) => {
                        stop.cancel();
                        Err(StepError::timed_out(format!("timed out after {}", humantime::format_duration(timeout))))
                    }
                    () = lost.cancelled() => return Ok(Ending::Lost),
                }
            };
            match result {
                Ok(output) => {
                    let last = unit + 1 == snapshot.units.len();
                    let patch = serde_json::json!({ "unit": unit + 1, "attempt": 0, "outputs": { label.clone(): super::model::output_text(&output) } });
                    if last {
                        return Ok(Ending::Finish(TenantState::Succeeded, None, patch));
                    }
                    match self.progress_retrying(task, holder, &patch).await? {
                        None => return Ok(Ending::Lost),
                        Some(RunState::Cancelled) => {
                            return Ok(Ending::Finish(TenantState::Cancelled, None, serde_json::json!({})));
                        }
                        // Paused between two units: the rest waits for `resume`.
                        Some(RunState::Paused) => return Ok(Ending::Paused),
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
                    if self.progress_retrying(task, holder, &patch).await?.is_none() {
                        return Ok(Ending::Lost);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = lost.cancelled() => return Ok(Ending::Lost),
                    }
                }
                Err(e) => {
                    let kind = if e.is_transient() { "gave up" } else { "permanent error" };
                    let error = format!("step {label}, attempt {attempt} of {max_attempts} ({kind}): {e}");
                    return Ok(Ending::Finish(
                        TenantState::Failed,
                        Some(error),
                        serde_json::json!({ "attempt": attempt }),
                    ));
                }
            }
        }
        Ok(Ending::Finish(TenantState::Succeeded, None, serde_json::json!({})))
    }

    /// Checks `host`'s load against the workflow's `[throttle]` before a unit. Over a limit,
    /// the tenant is given back (see `RunStore::defer`): it waits in its wave's pending list
    /// with the reason (`status`: "throttled: …"), its run and host slots go to other
    /// hosts' tenants, and no more of the host's tenants start until `check_every` has
    /// passed; a tenant that has waited `max_wait` fails with the reason instead. Under the
    /// limits, a wait that just ended is added to the tenant's `throttled_ms`.
    #[allow(clippy::too_many_arguments)]
    async fn check_load(
        &self,
        throttle: &crate::engine::load::ThrottleSpec,
        spec: &RunSpec,
        task: &TenantTask,
        holder: &str,
        host: &str,
        waited: &mut Waited,
        lost: &CancellationToken,
    ) -> Result<Load, StoreError> {
        let verdict = tokio::select! {
            v = crate::engine::load::verdict(throttle, &self.databases, host) => v,
            () = lost.cancelled() => return Ok(Load::Lost),
        };
        let now = super::store::now_ms();
        match verdict {
            None => {
                if let Some(since) = waited.since.take() {
                    waited.total += (now - since).max(0) as u64;
                    let patch = serde_json::json!({ "throttled": null, "throttled_since_ms": null, "throttled_ms": waited.total });
                    match self.progress_retrying(task, holder, &patch).await? {
                        None => return Ok(Load::Lost),
                        Some(RunState::Cancelled) => return Ok(Load::Cancelled),
                        Some(RunState::Paused) => return Ok(Load::Paused),
                        Some(_) => {}
                    }
                }
                Ok(Load::Go)
            }
            Some(why) => {
                let since = waited.since.unwrap_or(now);
                if now - since >= throttle.max_wait().as_millis() as i64 {
                    return Ok(Load::TooLong(format!(
                        "waited {} for its host's load (throttle.max_wait): {why}",
                        humantime::format_duration(throttle.max_wait())
                    )));
                }
                debug!(why, "throttled: the tenant goes back to pending");
                let snapshot = &spec.tenants[&task.tenant];
                if self
                    .store
                    .defer(&task.run_id, &task.tenant, snapshot, holder, host, throttle.check_every(), &why)
                    .await?
                {
                    Ok(Load::Deferred)
                } else {
                    Ok(Load::Lost)
                }
            }
        }
    }

    /// Records progress, retrying while Redis is unreachable (up to the lease: after that
    /// the lease is gone anyway, and the sweep gives the tenant to another worker).
    async fn progress_retrying(
        &self,
        task: &TenantTask,
        holder: &str,
        patch: &serde_json::Value,
    ) -> Result<Option<RunState>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.settings.lease.0;
        loop {
            match self.store.progress(&task.run_id, &task.tenant, holder, patch).await {
                Err(StoreError::Redis(e)) if tokio::time::Instant::now() < deadline => {
                    debug!(error = %e, "recording progress failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return other,
            }
        }
    }

    /// Records the outcome, retrying while Redis is unreachable (up to the lease: after
    /// that another worker owns the tenant and the receipt makes its retry a no-op).
    async fn finish_retrying(
        &self,
        task: &TenantTask,
        holder: &str,
        state: TenantState,
        error: Option<&str>,
        snapshot: &super::model::TenantSnapshot,
        patch: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + self.settings.lease.0;
        loop {
            match self.store.finish(&task.run_id, &task.tenant, Some(holder), state, error, snapshot, patch).await {
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
        {
            let (shutdown, stopping) = (shutdown.clone(), self.stopping.clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stopping.cancel();
            });
        }
        let maintenance = {
            let rt = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(rt.settings.sweep_interval.0);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut next_prune = tokio::time::Instant::now();
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = shutdown.cancelled() => break,
                    }
                    if let Err(e) = rt.maintain().await {
                        warn!(error = %e, "maintenance pass failed; retrying");
                    }
                    if tokio::time::Instant::now() >= next_prune {
                        next_prune = tokio::time::Instant::now() + rt.settings.prune_interval.0;
                        if let Err(e) = rt.prune().await {
                            warn!(error = %e, "pruning finished runs failed; retrying later");
                        }
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
        match result {
            // Not a failure of the worker: what it could not finish was given back above.
            Err(e @ super::queue::QueueError::DrainTimedOut { .. }) => {
                warn!(error = %e, "drain timed out");
                Ok(())
            }
            other => other,
        }
    }

    /// Gives back the leases of handlers dropped at the drain timeout and queues their
    /// tenants again at once, so other workers resume them now instead of after the lease
    /// expires — and without counting a lost worker against the tenant.
    async fn give_back_leases(&self) {
        let abandoned = std::mem::take(&mut self.leases.lock().expect("lease registry").abandoned);
        if abandoned.is_empty() {
            return;
        }
        // The dropped steps' statements must be stopped before anyone else runs the tenant.
        if !self.databases.settle_cleanup(Duration::from_secs(15)).await {
            warn!(
                tenants = abandoned.len(),
                "could not confirm that the stopped steps' statements ended; their leases are left to expire"
            );
            return;
        }
        for (run, tenant, nonce) in abandoned {
            match self.store.release(&run, &tenant, &nonce, self.grace()).await {
                Ok(Some(dispatch)) => {
                    info!(run, tenant, "lease given back at shutdown; another worker resumes the tenant");
                    self.push(&run, vec![(tenant, dispatch)]).await;
                }
                Ok(None) => {}
                Err(e) => warn!(run, tenant, error = %e, "could not give the lease back; it expires by itself"),
            }
        }
    }
}
