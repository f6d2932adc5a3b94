//! `Version`: the numeric, dotted migration version shared by all layouts, its ordering, text form and parse errors.

use std::fmt;
use std::str::FromStr;

/// A migration version: numeric components compared in order, so "1.10" sorts after "1.9" and
/// "10" after "2" (a string comparison would get both wrong).
///
/// The text form ([`Display`](fmt::Display)) joins the components with '.' and drops leading
/// zeros: `0001_init.sql` is version "1", `V1_2__x.sql` is "1.2". That text is the primary key
/// in history tables, so it must not depend on how a file happened to be padded.
///
/// Trailing zero components are kept ("1.0" is not equal to "1"); the directory scanner still
/// reports "1" and "1.0" in one directory as a duplicate, as Flyway would.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(Vec<u64>);

impl Version {
    /// The numeric components, most significant first; never empty.
    pub fn components(&self) -> &[u64] {
        &self.0
    }

    /// The same version without trailing zero components ("1.2.0" -> "1.2", "0" stays "0"),
    /// used to find versions that are distinct as text but equal as numbers.
    pub(crate) fn normalized(&self) -> Version {
        let keep = self.0.iter().rposition(|&c| c != 0).map_or(1, |i| i + 1);
        Version(self.0[..keep].to_vec())
    }
}

impl From<u64> for Version {
    fn from(version: u64) -> Self {
        Version(vec![version])
    }
}

/// Why a version text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("the version is empty")]
    Empty,
    #[error("the version has an empty component between dots")]
    EmptyComponent,
    #[error("`{found}` is not a digit")]
    NotDigit { found: char },
    #[error("component {component} does not fit in 64 bits")]
    Overflow { component: String },
}

impl FromStr for Version {
    type Err = VersionError;

    /// Parses "1", "0001", "1.2", "20240101120000". Only ASCII digits separated by single dots
    /// are accepted: no sign, no spaces, no empty components.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(VersionError::Empty);
        }
        let components = text
            .split('.')
            .map(|component| {
                if component.is_empty() {
                    return Err(VersionError::EmptyComponent);
                }
                if let Some(found) = component.chars().find(|c| !c.is_ascii_digit()) {
                    return Err(VersionError::NotDigit { found });
                }
                // Only digits remain, so the only possible failure is overflow.
                component.parse::<u64>().map_err(|_| VersionError::Overflow { component: component.to_owned() })
            })
            .collect::<Result<Vec<u64>, _>>()?;
        Ok(Version(components))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, component) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{component}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e: VersionError| serde::de::Error::custom(format_args!("invalid version `{text}`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn parses_components_and_drops_leading_zeros() {
        assert_eq!(v("1").components(), &[1]);
        assert_eq!(v("0001").components(), &[1]);
        assert_eq!(v("1.2").components(), &[1, 2]);
        assert_eq!(v("01.002.3").components(), &[1, 2, 3]);
        assert_eq!(v("20240101120000").components(), &[20_240_101_120_000]);
        assert_eq!(v("0001").to_string(), "1");
        assert_eq!(v("01.002.3").to_string(), "1.2.3");
        assert_eq!(v("0").to_string(), "0");
        assert_eq!(Version::from(7).to_string(), "7");
    }

    #[test]
    fn orders_numerically_not_as_text() {
        assert!(v("2") < v("10"));
        assert!(v("1.9") < v("1.10"));
        assert!(v("1") < v("1.1"));
        assert!(v("1.10") < v("2"));
        assert_eq!(v("0001"), v("1"));
        let mut versions = [v("10"), v("1.10"), v("2"), v("1.9"), v("1")];
        versions.sort();
        let texts: Vec<String> = versions.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["1", "1.9", "1.10", "2", "10"]);
    }

    #[test]
    fn rejects_empty_non_digits_and_overflow() {
        assert_eq!("".parse::<Version>(), Err(VersionError::Empty));
        assert_eq!("1..2".parse::<Version>(), Err(VersionError::EmptyComponent));
        assert_eq!(".1".parse::<Version>(), Err(VersionError::EmptyComponent));
        assert_eq!("1.".parse::<Version>(), Err(VersionError::EmptyComponent));
        assert_eq!("1x".parse::<Version>(), Err(VersionError::NotDigit { found: 'x' }));
        assert_eq!("-1".parse::<Version>(), Err(VersionError::NotDigit { found: '-' }));
        assert_eq!(" 1".parse::<Version>(), Err(VersionError::NotDigit { found: ' ' }));
        assert_eq!("١".parse::<Version>(), Err(VersionError::NotDigit { found: '١' }));
        assert_eq!("18446744073709551615".parse::<Version>().unwrap().components(), &[u64::MAX]);
        let err = "1.18446744073709551616".parse::<Version>().unwrap_err();
        assert_eq!(err.to_string(), "component 18446744073709551616 does not fit in 64 bits");
    }

    #[test]
    fn normalized_drops_trailing_zero_components_only() {
        assert_eq!(v("1.0.0").normalized(), v("1"));
        assert_eq!(v("1.0.2").normalized(), v("1.0.2"));
        assert_eq!(v("0.0").normalized(), v("0"));
        assert_eq!(v("10").normalized(), v("10"));
    }

    #[test]
    fn serializes_as_display_string_and_back() {
        assert_eq!(serde_json::to_string(&v("01.10")).unwrap(), "\"1.10\"");
        let parsed: Version = serde_json::from_str("\"1.10\"").unwrap();
        assert_eq!(parsed, v("1.10"));
        let err = serde_json::from_str::<Version>("\"1.x\"").unwrap_err();
        assert!(err.to_string().contains("invalid version `1.x`: `x` is not a digit"), "{err}");
        assert!(serde_json::from_str::<Version>("[1, 2]").is_err());
    }
}
