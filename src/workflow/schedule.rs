//! Cron schedules in a time zone: parsing (seconds optional), impossible expressions, next fire times.

use chrono::{DateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

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
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = after.with_nanosecond(0)?;
        let local = self.timezone.from_utc_datetime(&after.naive_utc());
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
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
