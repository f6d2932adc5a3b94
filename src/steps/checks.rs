//! Checks of option values that several kinds share (sample percentages, smoke queries, ratios), each reporting the option it is about.

use super::define::Findings;

pub(super) fn check_sample(sample: Option<f64>, out: &mut Findings) {
    if let Some(sample) = sample
        && !(sample > 0.0 && sample <= 100.0)
    {
        out.push(("sample".into(), format!("sample is a percentage of tenants and must be in (0, 100], not {sample}")));
    }
}

pub(super) fn check_smoke_queries(queries: &Option<Vec<String>>, out: &mut Findings) {
    if queries.as_ref().is_some_and(|q| q.iter().any(|q| q.trim().is_empty())) {
        out.push(("smoke_queries".into(), "smoke_queries contains an empty query".to_string()));
    }
}

pub(super) fn check_ratio(key: &str, ratio: Option<f64>, out: &mut Findings) {
    if let Some(r) = ratio
        && !(0.0..=1.0).contains(&r)
    {
        out.push((key.into(), format!("{key} is a ratio and must be in [0, 1], not {r}")));
    }
}
