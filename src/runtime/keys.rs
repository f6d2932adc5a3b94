//! Every Redis key tenantry writes, one function per key shape, all under the configured prefix.
//!
//! Nothing else formats a key. The layout is made for Redis Cluster, where a script or a
//! MULTI/EXEC may only touch keys of one hash slot, and the slot of a key is that of its
//! first `{...}` (its hash tag):
//!
//! - every key of one run carries the run id as its hash tag
//!   (`{prefix}:run:{<id>}`, `{prefix}:run:{<id>}:tenants`, ...), so each transition of a
//!   run is one script on one slot, and `{prefix}:run:{<id>}*` finds all of them;
//! - the installation's global keys (the run index, the active set, the schedules) carry
//!   the prefix as their hash tag (`{prefix}:{<prefix>}:runs`), so recording a schedule tick
//!   and publishing its run stay one script.
//!
//! A run's keys and the global keys are never in one script or transaction: operations that
//! need both are steps, each correct when the process dies before the next one (see
//! `store.rs`). The prefix may not contain `{` or `}` (`config::check` refuses it), or
//! it would become the hash tag of every key.

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

    /// The stem of the global keys: the prefix, hash-tagged by itself.
    fn global(&self, name: &str) -> String {
        format!("{0}:{{{0}}}:{name}", self.prefix)
    }

    /// The stem of one run's keys: the run id is the hash tag.
    fn stem(&self, run: &str) -> String {
        format!("{}:run:{{{run}}}", self.prefix)
    }

    /// ZSET run id -> creation time (ms): every run, newest last. A run enters it before
    /// any of its keys are written, so a run whose creation was cut short is still found
    /// (and removed) by the prune.
    pub fn runs(&self) -> String {
        self.global("runs")
    }

    /// SET of the published runs that are not finished: what workers keep moving. A run is
    /// published (added) once all its keys are written, and leaves when it ends.
    pub fn active_runs(&self) -> String {
        self.global("runs:active")
    }

    /// SET of runs the prune has taken out of the index to delete (creations that were
    /// never published); a prune cut short finishes them next time.
    pub fn doomed_runs(&self) -> String {
        self.global("runs:doomed")
    }

    /// HASH: the run record (state, workflow, trigger, times, reason, current wave, counters).
    pub fn run(&self, run: &str) -> String {
        self.stem(run)
    }

    /// STRING: the run's immutable snapshot (steps, waves, tenants and placements) as JSON.
    pub fn run_spec(&self, run: &str) -> String {
        format!("{}:spec", self.stem(run))
    }

    /// HASH tenant -> checkpoint JSON.
    pub fn run_tenants(&self, run: &str) -> String {
        format!("{}:tenants", self.stem(run))
    }

    /// ZSET (every score 0, ordered by member) of the tenants of wave `wave` waiting for
    /// dispatch, as `"{group} {tenant}"`: one key per wave whatever the number of host
    /// groups, so that a script is given every key it touches. The next tenant of a group
    /// is the first member in the lexical range `["{group} ", "{group}!")` (host names have
    /// no spaces), found in O(log n).
    pub fn run_pending(&self, run: &str, wave: usize) -> String {
        format!("{}:pending:{wave}", self.stem(run))
    }

    /// The member of [`Keys::run_pending`] for `tenant` of host group `group`.
    pub fn pending_member(group: &str, tenant: &str) -> String {
        format!("{group} {tenant}")
    }

    /// ZSET of the host groups of wave `wave` that have pending tenants and are not parked,
    /// scored round-robin (a group that was just served goes to the back). `advance` looks
    /// only at its head, so dispatching costs O(what it dispatches), not O(host groups).
    pub fn run_ready(&self, run: &str, wave: usize) -> String {
        format!("{}:ready:{wave}", self.stem(run))
    }

    /// HASH host -> space-separated host groups of wave `wave` parked because that host was
    /// at its limit; a tenant finishing on the host puts them back in the ready set.
    pub fn run_parked(&self, run: &str, wave: usize) -> String {
        format!("{}:parked:{wave}", self.stem(run))
    }

    /// HASH host -> the run's concurrency limit on it, written once when the run is created
    /// (not sent and decoded with every `advance`).
    pub fn run_limits(&self, run: &str) -> String {
        format!("{}:limits", self.stem(run))
    }

    /// HASH host -> tenants of this run in flight on it.
    pub fn run_hosts(&self, run: &str) -> String {
        format!("{}:hosts", self.stem(run))
    }

    /// ZSET tenant -> deadline (ms): tenants dispatched or running, scored by when their
    /// queue entry or lease must have been picked up or renewed. The sweep re-dispatches
    /// the ones past their deadline.
    pub fn run_inflight(&self, run: &str) -> String {
        format!("{}:inflight", self.stem(run))
    }

    /// STRING "worker|fence": the lease of one tenant of a run, with a TTL (it is not
    /// deleted with the run; it expires).
    pub fn lease(&self, run: &str, tenant: &str) -> String {
        format!("{}:lease:{tenant}", self.stem(run))
    }

    /// STRING counter: fencing tokens of a run, strictly increasing.
    pub fn fence(&self, run: &str) -> String {
        format!("{}:fence", self.stem(run))
    }

    /// LIST of the run's events (state changes, wave changes), for `status` and the API.
    pub fn run_events(&self, run: &str) -> String {
        format!("{}:events", self.stem(run))
    }

    /// HASH: a scheduled workflow's progress, the only key the scheduler keeps per
    /// workflow however often it fires. `done` = every tick up to this time (ms) is handled
    /// (its run created, or deliberately skipped); `claim` = `tick|owner|expires_ms`, the
    /// replica working on a tick right now (see `lua/tick_claim.lua`). A global key: it
    /// shares the slot of the run index, so a tick is recorded and its run published in
    /// one script.
    pub fn schedule(&self, workflow: &str) -> String {
        self.global(&format!("schedule:{workflow}"))
    }

    /// STRING (SET NX with a TTL): one process prunes finished runs at a time.
    pub fn prune_lock(&self) -> String {
        format!("{}:prune", self.prefix)
    }

    /// The apalis queue name; apalis derives its own keys from it. Not hash-tagged: the
    /// queue lives on one Redis (apalis-redis cannot run on a cluster, see the README).
    pub fn queue(&self) -> String {
        format!("{}:queue", self.prefix)
    }

    /// Pattern that matches every key of a run (for cleanup and tests).
    pub fn run_pattern(&self, run: &str) -> String {
        format!("{}*", self.stem(run))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag of a key as Redis Cluster computes it: the first `{...}` that is not empty.
    fn tag(key: &str) -> &str {
        if let Some(open) = key.find('{')
            && let Some(len) = key[open + 1..].find('}')
            && len > 0
        {
            return &key[open + 1..open + 1 + len];
        }
        key
    }

    #[test]
    fn a_runs_keys_share_the_run_id_as_hash_tag() {
        let k = Keys::new("t");
        assert_eq!(k.run("r1"), "t:run:{r1}");
        assert_eq!(k.lease("r1", "acme"), "t:run:{r1}:lease:acme");
        assert_eq!(k.run_pending("r1", 2), "t:run:{r1}:pending:2");
        let all = [
            k.run("r1"),
            k.run_spec("r1"),
            k.run_tenants("r1"),
            k.run_pending("r1", 0),
            k.run_ready("r1", 3),
            k.run_parked("r1", 3),
            k.run_limits("r1"),
            k.run_hosts("r1"),
            k.run_inflight("r1"),
            k.lease("r1", "acme"),
            k.fence("r1"),
            k.run_events("r1"),
        ];
        for key in &all {
            assert_eq!(tag(key), "r1", "{key}");
            assert!(key.starts_with("t:run:{r1}"), "{key} is not matched by {}", k.run_pattern("r1"));
        }
    }

    #[test]
    fn global_keys_share_the_prefix_as_hash_tag() {
        let k = Keys::new("t");
        assert_eq!(k.schedule("nightly"), "t:{t}:schedule:nightly");
        for key in [k.runs(), k.active_runs(), k.doomed_runs(), k.schedule("nightly")] {
            assert_eq!(tag(&key), "t", "{key}");
            assert!(key.starts_with("t:"), "{key}");
        }
    }
}
