//! Cron schedules in a time zone: parsing (seconds optional), impossible expressions, next fire times.

use chrono::{DateTime, LocalResult, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};

/// A workflow's schedule: when its runs are due, in its time zone (DST handled by
/// evaluating the expression in local time).
#[derive(Debug, Clone)]
pub struct Schedule {
    pub expression: String,
    pub timezone: Tz,
    cron: Cron,
}

impl Schedule {
    /// Parses `expression` (5 fields, or 6 with seconds first) in `timezone` (IANA name,
    /// default UTC). Errors are operator-facing and say what to write instead.
    pub fn parse(expression: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        let timezone = parse_timezone(timezone.unwrap_or("UTC"))?;
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(ScheduleError::Cron(format!(
                "cron expression {expression:?} has {fields} fields; write 5 (minute hour day month weekday) or 6 (seconds first)"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| {
                ScheduleError::Cron(format!("invalid cron expression {expression:?}: {}", lower_first(&e.to_string())))
            })?;
        let schedule = Self { expression: expression.to_string(), timezone, cron };
        // An expression like "0 0 30 2 *" (30 February) parses but never fires.
        if schedule.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::Cron(format!("cron expression {expression:?} never fires (no matching date)")));
        }
        Ok(schedule)
    }

    /// The first fire time strictly after `after`, on a whole second (cron has no finer
    /// resolution; every replica must compute the same tick for the same schedule).
    ///
    /// Always later than `after` in UTC, so a loop that feeds each answer back in moves
    /// forward and meets every tick once. croner searches in wall-clock time, which is
    /// ambiguous in the hour that a fall-back transition repeats: from inside that hour it
    /// answers with the first pass of the next matching wall time (in the past, or `after`
    /// itself) or skips the second pass entirely. So inside a repeated hour the fire times
    /// are found second by second in UTC instead, with croner's rules: a fixed-time
    /// expression (`30 2 * * *`) fires once, at the first pass; an interval expression
    /// (`*/15 * * * * *`, `0 * * * *`) fires in both passes, i.e. on its real-time rhythm.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.with_nanosecond(0)?;
        // A repeated hour is at most a few hours long (two in Antarctica/Troll); the bound
        // only guards against a time zone database gone wrong.
        for _ in 0..MAX_REPEATED_SECONDS {
            if !self.is_repeated(t) {
                break;
            }
            t += TimeDelta::seconds(1);
            if self.fires_at(t) {
                return Some(t);
            }
        }
        // Outside a repeated hour wall time maps to UTC one to one (croner handles the
        // spring-forward gap), so its answer is exact.
        let local = self.timezone.from_utc_datetime(&t.naive_utc());
        let next = self.cron.find_next_occurrence(&local, false).ok()?.with_timezone(&Utc);
        (next > t).then_some(next)
    }

    /// Whether the wall time at `t` happens twice (a fall-back transition repeats it).
    fn is_repeated(&self, t: DateTime<Utc>) -> bool {
        let wall = self.timezone.from_utc_datetime(&t.naive_utc()).naive_local();
        matches!(self.timezone.from_local_datetime(&wall), LocalResult::Ambiguous(..))
    }

    /// Whether the schedule fires at instant `t`: its wall time matches, and, for a
    /// fixed-time expression, it is the first of the two instants a repeated wall time has.
    fn fires_at(&self, t: DateTime<Utc>) -> bool {
        let local = self.timezone.from_utc_datetime(&t.naive_utc());
        if !self.cron.is_time_matching(&local).unwrap_or(false) {
            return false;
        }
        self.cron.determine_job_type() == JobType::IntervalWildcard
            || self.timezone.from_local_datetime(&local.naive_local()).earliest() == Some(local)
    }

    /// The six-field form (seconds first) that tokio-cron-scheduler expects.
    pub fn six_fields(&self) -> String {
        if self.expression.split_whitespace().count() == 5 {
            format!("0 {}", self.expression.trim())
        } else {
            self.expression.trim().to_string()
        }
    }
}

/// See [`Schedule::next_after`]: seconds walked through one repeated hour, at most.
const MAX_REPEATED_SECONDS: u32 = 6 * 3600;

pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>().map_err(|_| {
        ScheduleError::Timezone(format!(
            "unknown time zone {name:?}; use an IANA name such as \"UTC\" or \"Europe/Berlin\""
        ))
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Cron(String),
    #[error("{0}")]
    Timezone(String),
}

fn lower_first(s: &str) -> String {
    let s = s.trim_end_matches('.');
    let mut chars = s.chars();
    chars.next().map(|c| c.to_lowercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_fields() {
        let s = Schedule::parse("30 2 * * *", None).unwrap();
        assert_eq!(s.next_after(utc("2026-01-01T00:00:00Z")), Some(utc("2026-01-01T02:30:00Z")));
        assert_eq!(s.six_fields(), "0 30 2 * * *");
        let s = Schedule::parse("*/2 * * * * *", None).unwrap();
        assert_eq!(s.next_after(utc("2026-01-01T00:00:00Z")), Some(utc("2026-01-01T00:00:02Z")));
    }

    #[test]
    fn ticks_fall_on_whole_seconds_whatever_the_start() {
        let s = Schedule::parse("*/2 * * * * *", None).unwrap();
        let a = s.next_after(utc("2026-01-01T00:00:00.705Z")).unwrap();
        let b = s.next_after(utc("2026-01-01T00:00:00.748Z")).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, utc("2026-01-01T00:00:02Z"));
    }

    #[test]
    fn time_zones_and_dst() {
        let s = Schedule::parse("0 30 2 * * *", Some("Europe/Berlin")).unwrap();
        // Winter: UTC+1.
        assert_eq!(s.next_after(utc("2026-01-10T00:00:00Z")), Some(utc("2026-01-10T01:30:00Z")));
        // 29 March 2026: 02:30 local does not exist (clocks jump 02:00 -> 03:00); the run
        // must still happen that day, not be skipped silently into the next day.
        let next = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert!(next < utc("2026-03-29T12:00:00Z"), "{next}");
        // Summer: UTC+2.
        assert_eq!(s.next_after(utc("2026-07-01T12:00:00Z")), Some(utc("2026-07-02T00:30:00Z")));
    }

    /// Every fire time from `from` up to `until`, as the scheduler meets them: each answer
    /// fed back in. Fails the test when an answer does not move forward.
    fn walk(s: &Schedule, from: &str, until: &str) -> Vec<DateTime<Utc>> {
        let (mut t, until) = (utc(from), utc(until));
        let mut out = Vec::new();
        while let Some(next) = s.next_after(t) {
            assert!(next > t, "{}: next_after({t}) = {next} does not move forward", s.expression);
            if next > until {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }

    // Europe/Berlin, 25 October 2026: at 03:00 CEST (01:00Z) clocks go back to 02:00 CET,
    // so wall times 02:00:00-02:59:59 happen twice: 00:00Z-00:59:59Z and 01:00Z-01:59:59Z.

    #[test]
    fn dst_fall_back_interval_schedule_keeps_its_rhythm_through_the_repeated_hour() {
        let s = Schedule::parse("*/15 * * * * *", Some("Europe/Berlin")).unwrap();
        let ticks = walk(&s, "2026-10-24T23:59:30Z", "2026-10-25T02:00:30Z");
        // Every 15 s of real time, none skipped, none twice: 2 h 1 min = 484 ticks.
        assert_eq!(ticks.len(), 484, "first {:?}, last {:?}", ticks.first(), ticks.last());
        assert!(ticks.windows(2).all(|w| w[1] - w[0] == TimeDelta::seconds(15)), "{ticks:?}");
        // From the end of the first pass, the second pass follows (croner alone jumps to 03:00).
        assert_eq!(s.next_after(utc("2026-10-25T00:59:45Z")), Some(utc("2026-10-25T01:00:00Z")));
        // From inside the second pass, the answer is ahead, not an hour back in the first.
        assert_eq!(s.next_after(utc("2026-10-25T01:10:00Z")), Some(utc("2026-10-25T01:10:15Z")));
        assert_eq!(s.next_after(utc("2026-10-25T01:59:45Z")), Some(utc("2026-10-25T02:00:00Z")));
    }

    #[test]
    fn dst_fall_back_fixed_time_fires_once_and_never_repeats_or_goes_back() {
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        // 02:30 happens at 00:30Z (CEST) and 01:30Z (CET): a daily job runs once, at the first.
        let ticks = walk(&s, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z");
        assert_eq!(ticks, vec![utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]);
        // Started in the second pass (before or at the repeated 02:30): tomorrow, not the past
        // and not the same instant again (which made the scheduler spin for an hour).
        assert_eq!(s.next_after(utc("2026-10-25T01:10:00Z")), Some(utc("2026-10-26T01:30:00Z")));
        assert_eq!(s.next_after(utc("2026-10-25T01:30:00Z")), Some(utc("2026-10-26T01:30:00Z")));
        // Started in the first pass before 02:30: the first 02:30.
        assert_eq!(s.next_after(utc("2026-10-25T00:10:00Z")), Some(utc("2026-10-25T00:30:00Z")));
    }

    #[test]
    fn dst_fall_back_hourly_schedule_runs_every_real_hour() {
        let s = Schedule::parse("0 * * * *", Some("Europe/Berlin")).unwrap();
        let ticks = walk(&s, "2026-10-24T22:30:00Z", "2026-10-25T03:30:00Z");
        let expected: Vec<_> = (23..=27).map(|h| utc("2026-10-24T00:00:00Z") + TimeDelta::hours(h)).collect();
        assert_eq!(ticks, expected);
    }

    #[test]
    fn dst_walks_through_a_whole_year_forward_in_every_zone() {
        // New York falls back at 02:00 EDT, Lord Howe by half an hour; spring-forward gaps too.
        for zone in ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC"] {
            let fixed = Schedule::parse("30 1 * * *", Some(zone)).unwrap();
            let days = walk(&fixed, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z");
            assert!((364..=366).contains(&days.len()), "{zone}: {} daily runs in 2026", days.len());
            let interval = Schedule::parse("*/20 * * * *", Some(zone)).unwrap();
            let ticks = walk(&interval, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z");
            let irregular: Vec<_> = ticks.windows(2).filter(|w| w[1] - w[0] != TimeDelta::minutes(20)).collect();
            if zone == "Australia/Lord_Howe" {
                // Half-hour shifts: the repeated 01:40 fires in both passes (30 min after the
                // first), and the skipped 02:00 and 02:20 of the gap leave one 30-minute pause.
                assert_eq!(ticks.len(), 26_279, "{zone}");
                assert_eq!(irregular.len(), 2, "{zone}: {irregular:?}");
                assert!(irregular.iter().all(|w| w[1] - w[0] == TimeDelta::minutes(30)), "{zone}: {irregular:?}");
            } else {
                // Whole-hour shifts: 20 minutes of real time apart all year, 72 a day.
                assert_eq!(ticks.len(), 365 * 72, "{zone}");
                assert!(irregular.is_empty(), "{zone}: {irregular:?}");
            }
        }
    }

    #[test]
    fn bad_expressions_say_why() {
        let e = Schedule::parse("0 0 30 2 *", None).unwrap_err().to_string();
        assert!(e.contains("never fires"), "{e}");
        let e = Schedule::parse("61 * * * *", None).unwrap_err().to_string();
        assert!(e.contains("invalid cron expression \"61 * * * *\""), "{e}");
        let e = Schedule::parse("* * *", None).unwrap_err().to_string();
        assert!(e.contains("has 3 fields"), "{e}");
        let e = Schedule::parse("0 * * * *", Some("Mars/Olympus")).unwrap_err().to_string();
        assert!(e.contains("unknown time zone \"Mars/Olympus\""), "{e}");
    }
}
