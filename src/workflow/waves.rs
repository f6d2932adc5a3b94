//! Wave assignment: splitting a run's tenants into ordered waves by ids, labels or a deterministic percentage of those left.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{WaveSpec, target::labels_match};
use crate::catalog::{Tenant, TenantId};

/// The tenants of one wave, with the wave's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Wave {
    pub index: usize,
    pub name: String,
    pub tenants: Vec<TenantId>,
    pub max_failures: Option<u32>,
    pub max_failure_rate: Option<f64>,
    pub approval: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<crate::units::HumanDuration>,
}

/// The name shown for wave `index` when the file gives none.
pub fn wave_name(spec: &WaveSpec, index: usize) -> String {
    spec.name.clone().unwrap_or_else(|| format!("wave-{}", index + 1))
}

/// Assigns each tenant to the first wave that selects it. Waves take from the tenants not
/// yet assigned, in order; tenants no wave selects go to an implicit last wave `rest`
/// (or, with no waves at all, to a single wave `all`). Percentages choose by a hash of
/// `seed` and the tenant id, so the same workflow picks the same canaries every time,
/// while different workflows spread the risk over different tenants.
pub fn assign(specs: &[WaveSpec], tenants: &[&Tenant], seed: &str) -> Vec<Wave> {
    let mut remaining: Vec<&Tenant> = tenants.to_vec();
    let mut waves = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let chosen: Vec<&Tenant> = if let Some(ids) = &spec.tenants {
            remaining.iter().copied().filter(|t| ids.iter().any(|id| id == t.id.as_str())).collect()
        } else if let Some(selector) = &spec.labels {
            remaining.iter().copied().filter(|t| labels_match(selector, &t.labels)).collect()
        } else if let Some(percent) = spec.percent {
            let count = percent_count(percent, remaining.len());
            let mut ranked: Vec<(Vec<u8>, &Tenant)> =
                remaining.iter().map(|t| (rank(seed, t.id.as_str()), *t)).collect();
            ranked.sort_by(|a, b| a.0.cmp(&b.0));
            ranked.into_iter().take(count).map(|(_, t)| t).collect()
        } else {
            remaining.clone()
        };
        remaining.retain(|t| !chosen.iter().any(|c| c.id == t.id));
        waves.push(make_wave(index, wave_name(spec, index), chosen, spec));
    }
    if !remaining.is_empty() || waves.is_empty() {
        let name = if specs.is_empty() { "all" } else { "rest" };
        waves.push(make_wave(waves.len(), name.to_string(), remaining, &WaveSpec::default()));
    }
    waves
}

/// `percent` of `n`, rounded up so a non-zero percentage of a non-empty set is never empty.
pub fn percent_count(percent: f64, n: usize) -> usize {
    if percent <= 0.0 || n == 0 {
        return 0;
    }
    (((percent / 100.0) * n as f64).ceil() as usize).clamp(1, n)
}

fn rank(seed: &str, id: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    h.finalize().to_vec()
}

fn make_wave(index: usize, name: String, mut tenants: Vec<&Tenant>, spec: &WaveSpec) -> Wave {
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    Wave {
        index,
        name,
        tenants: tenants.into_iter().map(|t| t.id.clone()).collect(),
        max_failures: spec.max_failures,
        max_failure_rate: spec.max_failure_rate,
        approval: spec.approval,
        soak: spec.soak,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::catalog::TenantStatus;

    fn tenant(id: &str, tier: &str) -> Tenant {
        Tenant {
            id: TenantId::parse(id).unwrap(),
            name: id.into(),
            status: TenantStatus::Active,
            labels: BTreeMap::from([("tier".to_string(), tier.to_string())]),
            placements: BTreeMap::new(),
        }
    }

    #[test]
    fn canary_then_percent_then_rest() {
        let all: Vec<Tenant> =
            (0..100).map(|i| tenant(&format!("t{i:03}"), if i % 10 == 0 { "free" } else { "paid" })).collect();
        let refs: Vec<&Tenant> = all.iter().collect();
        let specs = vec![
            WaveSpec { name: Some("canary".into()), tenants: Some(vec!["t042".into()]), ..Default::default() },
            WaveSpec { labels: Some(BTreeMap::from([("tier".into(), "free".into())])), ..Default::default() },
            WaveSpec { name: Some("ten".into()), percent: Some(10.0), ..Default::default() },
        ];
        let waves = assign(&specs, &refs, "rollout");
        assert_eq!(waves.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["canary", "wave-2", "ten", "rest"]);
        assert_eq!(waves[0].tenants, vec![TenantId::parse("t042").unwrap()]);
        assert_eq!(waves[1].tenants.len(), 10);
        // 10 % of the 89 left, rounded up.
        assert_eq!(waves[2].tenants.len(), 9);
        assert_eq!(waves[3].tenants.len(), 80);
        let total: usize = waves.iter().map(|w| w.tenants.len()).sum();
        assert_eq!(total, 100, "every tenant in exactly one wave");
        // Deterministic for a seed, different across seeds.
        assert_eq!(assign(&specs, &refs, "rollout")[2].tenants, waves[2].tenants);
        assert_ne!(assign(&specs, &refs, "other")[2].tenants, waves[2].tenants);
    }

    #[test]
    fn no_waves_is_one_wave() {
        let all = [tenant("a", "x"), tenant("b", "x")];
        let refs: Vec<&Tenant> = all.iter().collect();
        let waves = assign(&[], &refs, "s");
        assert_eq!(waves.len(), 1);
        assert_eq!(waves[0].name, "all");
        assert_eq!(waves[0].tenants.len(), 2);
    }

    #[test]
    fn percent_rounds_up_and_caps() {
        assert_eq!(percent_count(10.0, 5), 1);
        assert_eq!(percent_count(100.0, 7), 7);
        assert_eq!(percent_count(0.0, 7), 0);
        assert_eq!(percent_count(50.0, 0), 0);
    }
}
