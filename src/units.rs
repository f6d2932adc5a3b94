//! Durations and sizes as people write them in config and workflow files: `"90d"`, `"5m"`, `"1h 30m"`, `"16MiB"`.

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
}
