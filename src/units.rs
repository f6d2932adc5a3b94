//! Durations, sizes and daily windows as people write them in config and workflow files: `"90d"`, `"5m"`, `"1h 30m"`, `"16MiB"`, `"01:00-05:00"`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written like `"30s"`, `"5m"`, `"2h"`, `"90d"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Self)
            .map_err(|e| format!("invalid duration {s:?}: {e} (write it like \"30s\", \"5m\", \"2h\" or \"90d\")"))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A size in bytes written like `"8MiB"`, `"512KiB"`, `"1GiB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "KB" | "K" | "k" => 1 << 10,
            "MiB" | "MB" | "M" => 1 << 20,
            "GiB" | "GB" | "G" => 1 << 30,
            _ => return Err(format!("invalid size {s:?} (write it like \"8MiB\", \"512KiB\" or \"1GiB\")")),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .map(Self)
            .ok_or_else(|| format!("invalid size {s:?} (write it like \"8MiB\", \"512KiB\" or \"1GiB\")"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Self(n)),
            Raw::Text(s) => Self::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A daily time window written like `"01:00-05:00"` (or `"22:00-04:00"`, across midnight),
/// read in a workflow's time zone: when maintenance may start new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyWindow {
    /// Minutes after midnight.
    start: u32,
    end: u32,
}

impl DailyWindow {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid window {s:?} (write it like \"01:00-05:00\": start and end, HH:MM)");
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && m.to_string().len() <= 2).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("window {s:?} starts and ends at the same time; leave it out to allow any time"));
        }
        Ok(Self { start, end })
    }

    /// Whether `at` (a time of day in the window's zone) is inside: from the start, up to
    /// but not including the end.
    pub fn contains(&self, at: chrono::NaiveTime) -> bool {
        use chrono::Timelike;
        let m = at.hour() * 60 + at.minute();
        if self.start < self.end { self.start <= m && m < self.end } else { m >= self.start || m < self.end }
    }
}

impl fmt::Display for DailyWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

impl Serialize for DailyWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DailyWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DailyWindow::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_people_write_them() {
        assert_eq!(HumanDuration::parse("90d").unwrap().0, Duration::from_secs(90 * 86400));
        assert_eq!(HumanDuration::parse("5m").unwrap().0, Duration::from_secs(300));
        assert_eq!(HumanDuration::parse("1h 30m").unwrap().0, Duration::from_secs(5400));
        assert!(HumanDuration::parse("5 parsecs").unwrap_err().contains("invalid duration \"5 parsecs\""));
        assert!(HumanDuration::parse("").is_err());
    }

    #[test]
    fn sizes_as_people_write_them() {
        assert_eq!(ByteSize::parse("8MiB").unwrap().0, 8 << 20);
        assert_eq!(ByteSize::parse("512 KiB").unwrap().0, 512 << 10);
        assert_eq!(ByteSize::parse("1024").unwrap().0, 1024);
        assert!(ByteSize::parse("8 parsecs").is_err());
        assert!(ByteSize::parse("MiB").is_err());
    }

    #[test]
    fn daily_windows_as_people_write_them() {
        let t = |h, m| chrono::NaiveTime::from_hms_opt(h, m, 0).unwrap();
        let night = DailyWindow::parse("01:00-05:00").unwrap();
        assert!(night.contains(t(1, 0)) && night.contains(t(4, 59)));
        assert!(!night.contains(t(5, 0)) && !night.contains(t(0, 59)));
        let across = DailyWindow::parse("22:30-4:00").unwrap();
        assert_eq!(across.to_string(), "22:30-04:00");
        assert!(across.contains(t(23, 0)) && across.contains(t(3, 0)) && !across.contains(t(12, 0)));
        for bad in ["1-5", "25:00-01:00", "01:00", "01:00-01:00", "01:60-02:00"] {
            assert!(DailyWindow::parse(bad).is_err(), "{bad}");
        }
    }
}
