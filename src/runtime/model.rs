//! What a run is: its state machine, its immutable snapshot, and the per-tenant checkpoint kept in Redis.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::Placement;
use crate::steps::StepSpec;
use crate::units::HumanDuration;
use crate::workflow::{RetrySpec, Wave};

/// The life of a run (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    AwaitingApproval,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a tenant is in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// Not dispatched yet.
    Pending,
    /// Handed to the queue, waiting for a worker.
    Queued,
    /// A worker holds its lease.
    Running,
    Succeeded,
    Failed,
    /// Its run was cancelled before or while it ran.
    Cancelled,
    /// Its run stopped (halted by a budget) after it was dispatched, before it started.
    Skipped,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }

    pub fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled | Self::Skipped)
    }
}

/// One step on one service: the unit of checkpointing. A tenant's units run in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Index into [`RunSpec::steps`].
    pub step: usize,
    pub service: String,
    /// Set when the run was created, from the step's plan (a target outside the step's
    /// sample, see [`crate::steps::define::Step::selects`]): the unit is recorded as
    /// skipped with this reason instead of running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
}

/// A tenant's placements by service, in a run's snapshot: a short list kept in service
/// order, stored in JSON as an object (as a map would be). Every worker holds the snapshot
/// of each active run, one entry per tenant: a `BTreeMap` here allocated a whole B-tree
/// node (room for 11 placements, about 1.7 KiB) per tenant for its one or two services,
/// 17 MiB of a 10,000-tenant run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placements(Vec<(String, Placement)>);

impl Placements {
    pub fn get(&self, service: &str) -> Option<&Placement> {
        self.0.iter().find(|(s, _)| s == service).map(|(_, p)| p)
    }

    /// Sets the placement of `service` (replacing an earlier one).
    pub fn insert(&mut self, service: String, placement: Placement) {
        match self.0.binary_search_by(|(s, _)| s.as_str().cmp(&service)) {
            Ok(i) => self.0[i].1 = placement,
            Err(i) => self.0.insert(i, (service, placement)),
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &Placement> {
        self.0.iter().map(|(_, p)| p)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Placement)> {
        self.0.iter().map(|(s, p)| (s, p))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Index<&String> for Placements {
    type Output = Placement;

    fn index(&self, service: &String) -> &Placement {
        self.get(service).unwrap_or_else(|| panic!("no placement for service {service}"))
    }
}

impl Serialize for Placements {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(s, p)| (s, p)))
    }
}

impl<'de> Deserialize<'de> for Placements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Placements;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of service to placement")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Placements, A::Error> {
                let mut out = Placements(Vec::with_capacity(map.size_hint().unwrap_or(1).min(64)));
                while let Some((service, placement)) = map.next_entry::<String, Placement>()? {
                    out.insert(service, placement);
                }
                out.0.shrink_to_fit();
                Ok(out)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// A tenant as snapshotted when the run was created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantSnapshot {
    pub wave: usize,
    /// Placements of the services the run touches, by service.
    pub placements: Placements,
    pub units: Vec<Unit>,
    /// The hosts the tenant's units touch, sorted, joined by '+': its concurrency group.
    pub group: String,
    /// The catalog labels the run's steps read (a purge's `retention_label`), only those.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Everything a worker needs to run a tenant of this run, fixed when the run is created so
/// that the run is reproducible whatever happens to the catalog or the workflow file later.
/// Host URLs are not in it: secrets stay out of Redis, and each worker resolves host names
/// against its own configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub id: String,
    pub workflow: String,
    pub steps: Vec<StepSpec>,
    pub retry: RetrySpec,
    pub timeout: HumanDuration,
    pub run_concurrency: u32,
    /// Tenants in flight per host for this run.
    pub host_limits: BTreeMap<String, u32>,
    pub waves: Vec<Wave>,
    pub tenants: BTreeMap<String, TenantSnapshot>,
    /// For services with a `migrate` step: the (version, checksum) of every migration file
    /// when the run was created. A worker whose files differ refuses to migrate, so one run
    /// never applies two versions of the truth.
    #[serde(default)]
    pub migrations: BTreeMap<String, Vec<(String, String)>>,
    /// For a retry run: the first run of its chain of retries, whose receipts it reads and
    /// writes, so a unit that committed in an earlier run of the chain is not applied again.
    /// None for a run that is its own root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_run: Option<String>,
    /// The workflow's `timezone` (IANA name) when it sets one: where the calendar days,
    /// weeks and months of its steps begin (`prune_backups`' daily/weekly/monthly keeps).
    /// None: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The report the run writes when it ends (the workflow's `report`). Such a run stays in
    /// the active set until a worker has written it (see `Runtime::conclude`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::workflow::ReportKind>,
    /// The workflow's `[throttle]`: the load limits over which a host's tenants wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<crate::engine::load::ThrottleSpec>,
}

impl RunSpec {
    /// The run id that keys this run's receipts.
    pub fn receipt_run(&self) -> &str {
        self.receipt_run.as_deref().unwrap_or(&self.id)
    }

    /// The workflow's time zone; UTC when it sets none. (`validate` and `run` refuse an
    /// unknown name before a run is created.)
    pub fn zone(&self) -> chrono_tz::Tz {
        self.timezone.as_deref().and_then(|z| crate::workflow::parse_timezone(z).ok()).unwrap_or(chrono_tz::UTC)
    }

    /// The per-wave settings the advance script needs, as JSON.
    pub fn waves_json(&self) -> String {
        let waves: Vec<serde_json::Value> = self
            .waves
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.name,
                    "size": w.tenants.len(),
                    "max_failures": w.max_failures,
                    "max_failure_rate": w.max_failure_rate,
                    "approval": w.approval,
                    "soak_ms": w.soak.map_or(0, |s| s.0.as_millis() as u64),
                })
            })
            .collect();
        serde_json::Value::Array(waves).to_string()
    }
}

/// A tenant's checkpoint in a run, as stored in the run's tenants hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub state: TenantState,
    pub wave: usize,
    /// Index of the next unit to run.
    #[serde(default)]
    pub unit: usize,
    /// Attempts made at the current unit.
    #[serde(default)]
    pub attempt: u32,
    /// Dispatch number: bumped on every (re-)dispatch, so stale queue entries are refused.
    #[serde(default)]
    pub dispatch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// How often a worker died (lost its lease) while running this tenant.
    #[serde(default)]
    pub lost: u32,
    /// Why the tenant waits now for its host's load (`[throttle]`), as `status` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<String>,
    /// How long the tenant has waited for its hosts' load, in all (the wait going on now
    /// not included until it ends).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled_ms: u64,
    /// Since when it waits now (set when it was first given back for its host's load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_since_ms: Option<i64>,
    /// Per unit (`step/service`), what the step reported. Stored as JSON text inside the
    /// checkpoint so the Lua scripts pass it through untouched (cjson would turn an empty
    /// array into an empty object).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "outputs_from_text")]
    pub outputs: BTreeMap<String, serde_json::Value>,
}

/// A unit's name within a tenant's run (`step/service`): its key in
/// [`Checkpoint::outputs`] and in receipts.
pub fn unit_label(step: &StepSpec, service: &str) -> String {
    format!("{}/{service}", step.label())
}

/// Encodes one unit's output for a checkpoint patch (see [`Checkpoint::outputs`]).
pub fn output_text(output: &serde_json::Value) -> serde_json::Value {
    serde_json::Value::String(output.to_string())
}

fn outputs_from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, serde_json::Value>, D::Error> {
    let raw: BTreeMap<String, serde_json::Value> = match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(map) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    Ok(raw
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(text) => {
                (k, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
            }
            other => (k, other),
        })
        .collect())
}

impl Checkpoint {
    pub fn pending(wave: usize) -> Self {
        Self {
            state: TenantState::Pending,
            wave,
            unit: 0,
            attempt: 0,
            dispatch: 0,
            worker: None,
            fence: None,
            queued_ms: None,
            claimed_ms: None,
            started_ms: None,
            finished_ms: None,
            last_error: None,
            lost: 0,
            throttled: None,
            throttled_ms: 0,
            throttled_since_ms: None,
            outputs: BTreeMap::new(),
        }
    }
}

/// How a run was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Trigger {
    Schedule { tick_ms: i64 },
    Operator,
    Api,
    Retry { parent: String },
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Schedule { tick_ms } => write!(f, "schedule@{tick_ms}"),
            Self::Operator => f.write_str("operator"),
            Self::Api => f.write_str("api"),
            Self::Retry { parent } => write!(f, "retry of {parent}"),
        }
    }
}

/// The run record as shown by `runs` and `status`.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub workflow: String,
    pub trigger: String,
    pub parent: Option<String>,
    pub state: RunState,
    pub reason: Option<String>,
    /// Set while a run that exceeded a failure budget waits for its in-flight tenants.
    pub halting: Option<String>,
    pub wave: usize,
    pub tenants: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub skipped: u64,
    pub inflight: u64,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub soak_until_ms: Option<i64>,
    /// The report the run writes when it ends (`drill`), if its workflow asks for one.
    pub report: Option<String>,
    /// Why that report could not be written (the run gave up on it).
    pub report_error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_are_a_json_object_by_service_as_before() {
        // Specs written by earlier versions (a map) must still load, and the other way round.
        let json = r#"{"core":{"service":"core","engine":"postgres","isolation":"schema","host":"h1","database":"d","schema":"tenant_a"},
                       "billing":{"service":"billing","engine":"postgres","isolation":"database","host":"h2","database":"b_a","schema":"public"}}"#;
        let placements: Placements = serde_json::from_str(json).unwrap();
        assert_eq!(placements.len(), 2);
        assert_eq!(placements.get("core").unwrap().host, "h1");
        assert_eq!(placements[&"billing".to_string()].database, "b_a");
        assert!(placements.get("identity").is_none());
        let as_map: BTreeMap<String, Placement> = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_value(&placements).unwrap(), serde_json::to_value(&as_map).unwrap());
        assert_eq!(placements.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["billing", "core"]);
    }
}
