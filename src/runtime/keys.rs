//! Every Redis key tenantry writes, one function per key shape, all under the configured prefix.
//!
//! Nothing else formats a key. A run's keys share the `{prefix}:run:{id}` stem so that a
//! run can be inspected (or deleted) with one SCAN pattern.

/// Key names of one installation (one prefix).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_string() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// ZSET run id -> creation time (ms): every run, newest last.
    pub fn runs(&self) -> String {
        format!("{}:runs", self.prefix)
    }

    /// SET of run ids that are not finished, for sweeps after a restart.
    pub fn active_runs(&self) -> String {
        format!("{}:runs:active", self.prefix)
    }

    /// HASH: the run record (state, workflow, trigger, times, reason, current wave, counters).
    pub fn run(&self, run: &str) -> String {
        format!("{}:run:{run}", self.prefix)
    }

    /// STRING: the run's immutable snapshot (steps, waves, tenants and placements) as JSON.
    pub fn run_spec(&self, run: &str) -> String {
        format!("{}:run:{run}:spec", self.prefix)
    }

    /// HASH tenant -> checkpoint JSON.
    pub fn run_tenants(&self, run: &str) -> String {
        format!("{}:run:{run}:tenants", self.prefix)
    }

    /// LIST of tenants of wave `wave` waiting for dispatch, for one host group.
    pub fn run_pending(&self, run: &str, wave: usize, group: &str) -> String {
        format!("{}:run:{run}:pending:{wave}:{group}", self.prefix)
    }

    /// ZSET of the host groups of wave `wave` that have pending tenants and are not parked,
    /// scored round-robin (a group that was just served goes to the back). `advance` looks
    /// only at its head, so dispatching costs O(what it dispatches), not O(host groups).
    pub fn run_ready(&self, run: &str, wave: usize) -> String {
        format!("{}:run:{run}:ready:{wave}", self.prefix)
    }

    /// HASH host -> space-separated host groups of wave `wave` parked because that host was
    /// at its limit; a tenant finishing on the host puts them back in the ready set.
    pub fn run_parked(&self, run: &str, wave: usize) -> String {
        format!("{}:run:{run}:parked:{wave}", self.prefix)
    }

    /// HASH host -> the run's concurrency limit on it, written once when the run is created
    /// (not sent and decoded with every `advance`).
    pub fn run_limits(&self, run: &str) -> String {
        format!("{}:run:{run}:limits", self.prefix)
    }

    /// HASH host -> tenants of this run in flight on it.
    pub fn run_hosts(&self, run: &str) -> String {
        format!("{}:run:{run}:hosts", self.prefix)
    }

    /// ZSET tenant -> deadline (ms): tenants dispatched or running, scored by when their
    /// queue entry or lease must have been picked up or renewed. The sweep re-dispatches
    /// the ones past their deadline.
    pub fn run_inflight(&self, run: &str) -> String {
        format!("{}:run:{run}:inflight", self.prefix)
    }

    /// STRING "worker fence": the lease of one tenant of a run, with a TTL.
    pub fn lease(&self, run: &str, tenant: &str) -> String {
        format!("{}:run:{run}:lease:{tenant}", self.prefix)
    }

    /// STRING counter: fencing tokens of a run, strictly increasing.
    pub fn fence(&self, run: &str) -> String {
        format!("{}:run:{run}:fence", self.prefix)
    }

    /// LIST of the run's events (state changes, wave changes), for `status` and the API.
    pub fn run_events(&self, run: &str) -> String {
        format!("{}:run:{run}:events", self.prefix)
    }

    /// HASH: a scheduled workflow's progress, the only key the scheduler keeps per
    /// workflow however often it fires. `done` = every tick up to this time (ms) is handled
    /// (its run created, or deliberately skipped); `claim` = `tick|owner|expires_ms`, the
    /// replica working on a tick right now (see `lua/tick_claim.lua`).
    pub fn schedule(&self, workflow: &str) -> String {
        format!("{}:schedule:{workflow}", self.prefix)
    }

    /// STRING (SET NX with a TTL): one process prunes finished runs at a time.
    pub fn prune_lock(&self) -> String {
        format!("{}:prune", self.prefix)
    }

    /// The apalis queue name; apalis derives its own keys from it.
    pub fn queue(&self) -> String {
        format!("{}:queue", self.prefix)
    }

    /// Pattern that matches every key of a run (for cleanup).
    pub fn run_pattern(&self, run: &str) -> String {
        format!("{}:run:{run}*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_prefix_and_the_run_stem() {
        let k = Keys::new("t");
        assert_eq!(k.run("r1"), "t:run:r1");
        assert_eq!(k.lease("r1", "acme"), "t:run:r1:lease:acme");
        assert_eq!(k.run_pending("r1", 2, "main"), "t:run:r1:pending:2:main");
        assert!(k.run_tenants("r1").starts_with(&k.run("r1")));
        assert_eq!(k.schedule("nightly"), "t:schedule:nightly");
    }
}
