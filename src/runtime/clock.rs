//! The scheduler's "now": the system clock in production, tokio's (pausable) clock in tests.
//!
//! The scheduler computes ticks from wall-clock time (cron is about calendars) but waits
//! with `tokio::time::sleep`. Both come from one [`Clock`] so that a test can pause tokio's
//! time and cross hours of ticks, or a DST transition, in milliseconds.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// Shared by every loop of one scheduler.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Wall time that follows tokio's clock from a chosen instant: under
/// `tokio::time::pause()` it moves only when tokio's time does (a sleep, or `advance`),
/// so "sleep until the tick, then read the clock" lands exactly on the tick.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `origin` now. Needs a tokio runtime.
    pub fn starting_at(origin: DateTime<Utc>) -> Self {
        Self { origin, start: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().duration_since(self.start);
        self.origin + TimeDelta::from_std(elapsed).unwrap_or(TimeDelta::MAX)
    }
}

/// How long to sleep (tokio time) until `clock` reads `at`; zero when it is past.
pub fn until(clock: &dyn Clock, at: DateTime<Utc>) -> std::time::Duration {
    (at - clock.now()).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_moves_with_paused_time_only() {
        let origin = DateTime::parse_from_rfc3339("2026-10-25T00:59:00Z").unwrap().with_timezone(&Utc);
        let clock = TokioClock::starting_at(origin);
        assert_eq!(clock.now(), origin);
        // Real time passes, virtual time does not.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(clock.now(), origin);
        let at = origin + TimeDelta::hours(3);
        tokio::time::sleep(until(&clock, at)).await;
        assert_eq!(clock.now(), at);
        assert_eq!(until(&clock, origin), std::time::Duration::ZERO, "a past instant is no wait");
    }
}
