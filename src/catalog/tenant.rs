//! Tenants: validated ids, status, labels and the catalog entries that describe them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::PlacementSpec;

/// A tenant id. It ends up in identifiers (`tenant_{tenant}`), object keys and Redis keys,
/// so only `^[a-z0-9][a-z0-9_-]{0,62}$` is accepted: no quotes, spaces, dots, slashes,
/// colons or upper case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, String> {
        check_name(s, "tenant id").map(|()| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a name that becomes part of identifiers and keys (tenant ids, service and host
/// names): `^[a-z0-9][a-z0-9_-]{0,62}$`. The error quotes the name with Rust escaping so
/// that invisible characters show.
pub fn check_name(s: &str, what: &str) -> Result<(), String> {
    let problem = if s.is_empty() {
        Some("it is empty".to_string())
    } else if s.len() > 63 {
        Some(format!("it is {} characters long, at most 63 are allowed", s.chars().count()))
    } else if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        Some("it must start with a lower-case letter or a digit".to_string())
    } else {
        s.chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'))
            .map(|c| format!("it contains {c:?}; only a-z, 0-9, '_' and '-' are allowed"))
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(format!("invalid {what} {s:?}: {p}")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    #[default]
    Active,
    Suspended,
    Archived,
}

impl TenantStatus {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            "archived" => Ok(Self::Archived),
            other => Err(format!("invalid tenant status {other:?}: expected active, suspended or archived")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Archived => "archived",
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant as written in the static catalog (`[[catalog.tenants]]`) or returned by the
/// catalog query, before its placements are resolved against the services.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: TenantStatus,
    #[serde(default)]
    pub labels: BTreeMap<String, LabelValue>,
    /// Services used with the service's default placement.
    #[serde(default)]
    pub services: Vec<String>,
    /// Services used with an overridden placement.
    #[serde(default)]
    pub placements: BTreeMap<String, PlacementSpec>,
}

/// Labels are strings; numbers and booleans are accepted in TOML and JSON and kept as their
/// text (`retention_days = 30` is the label "30").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelValue(pub String);

impl<'de> Deserialize<'de> for LabelValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(LabelValue(
            match Raw::deserialize(d)
                .map_err(|_| serde::de::Error::custom("a label value must be a string, a number or a boolean"))?
            {
                Raw::S(s) => s,
                Raw::I(i) => i.to_string(),
                Raw::F(f) => f.to_string(),
                Raw::B(b) => b.to_string(),
            },
        ))
    }
}

/// A tenant of the resolved catalog.
#[derive(Debug, Clone, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub status: TenantStatus,
    pub labels: BTreeMap<String, String>,
    /// Keyed by service name.
    pub placements: BTreeMap<String, super::Placement>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        for id in ["a", "acme", "acme-corp", "acme_2", "0day", &"a".repeat(63)] {
            assert!(TenantId::parse(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn invalid_ids_name_the_id_and_the_reason() {
        let cases = [
            ("", "it is empty"),
            ("Acme", "must start with a lower-case letter"),
            ("acme corp", "contains ' '"),
            ("acme\"; drop", "contains '\"'"),
            ("acme'", "contains '\\''"),
            ("a.b", "contains '.'"),
            ("a/b", "contains '/'"),
            ("a:b", "contains ':'"),
            ("-acme", "must start with"),
            ("acmé", "contains 'é'"),
        ];
        for (id, reason) in cases {
            let err = TenantId::parse(id).unwrap_err();
            assert!(err.contains(reason), "{id:?}: {err}");
            assert!(err.contains(&format!("{id:?}")), "{id:?}: {err}");
        }
        let long = "a".repeat(64);
        assert!(TenantId::parse(&long).unwrap_err().contains("64 characters"));
    }
}
