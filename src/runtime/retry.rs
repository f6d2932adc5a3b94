//! Backoff between attempts: exponential, capped, with full jitter so that a fleet of tenants failing together does not retry together.

use std::time::Duration;

use crate::workflow::RetrySpec;

/// The delay before attempt `next_attempt` (2 = the first retry). `unit` is a number in
/// [0, 1) that supplies the jitter, passed in so the computation can be tested.
pub fn backoff(policy: &RetrySpec, next_attempt: u32, unit: f64) -> Duration {
    let base = policy.backoff.0.as_secs_f64();
    let cap = policy.max_backoff.0.as_secs_f64();
    let exponent = next_attempt.saturating_sub(2).min(30);
    let ceiling = (base * 2f64.powi(exponent as i32)).min(cap);
    let secs = if policy.jitter { ceiling * (0.5 + unit.clamp(0.0, 1.0) / 2.0) } else { ceiling };
    Duration::from_secs_f64(secs)
}

/// A jitter source good enough for spreading retries (not for cryptography).
pub fn jitter_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::HumanDuration;

    fn policy(jitter: bool) -> RetrySpec {
        RetrySpec {
            attempts: 5,
            backoff: HumanDuration(Duration::from_secs(2)),
            max_backoff: HumanDuration(Duration::from_secs(10)),
            jitter,
            lost_leases: 10,
        }
    }

    #[test]
    fn exponential_and_capped() {
        let p = policy(false);
        let secs: Vec<u64> = (2..=6).map(|a| backoff(&p, a, 0.0).as_secs()).collect();
        assert_eq!(secs, vec![2, 4, 8, 10, 10]);
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let p = policy(true);
        assert_eq!(backoff(&p, 3, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(&p, 3, 1.0), Duration::from_secs(4));
        for _ in 0..100 {
            let u = jitter_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
