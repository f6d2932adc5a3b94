//! A step as written in a workflow file: the kind, the common keys, and the kind's own options as a table that the kind's file reads (see [`super::define::Step::Options`]).
//!
//! The common keys are deserialized while toml still knows where they are, so a wrong type
//! or an unknown kind is reported at its position; the options are kept as written and
//! checked by `validate` against the kind (each finding names its option, so `validate` can
//! point at its line).

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::StepKind;
use crate::units::HumanDuration;

/// Keys every step may have.
pub const COMMON_OPTIONS: [&str; 4] = ["kind", "name", "services", "timeout"];

#[derive(Debug, Clone, Serialize)]
pub struct StepSpec {
    pub kind: StepKind,
    /// A label for output; defaults to the kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Services this step runs on; default: every service of the workflow's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// Per-tenant time limit of this step; default: the workflow's `timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Every other key: the kind's options, read by the kind ([`StepSpec::options_as`]).
    #[serde(flatten)]
    pub options: toml::Table,
}

impl StepSpec {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.kind.to_string())
    }

    /// The options as the kind `O` belongs to reads them.
    pub fn options_as<O: serde::de::DeserializeOwned>(&self) -> Result<O, String> {
        super::define::parse(&self.options)
    }

    /// Every problem of the step's keys besides unknown options: the common keys' values,
    /// then the kind's findings. Each names the key it is about.
    pub fn check_values(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.timeout.is_some_and(|d| d.0.is_zero()) {
            out.push(("timeout".to_string(), "timeout must be longer than zero".to_string()));
        }
        out.extend(self.kind.def().check(self));
        out
    }
}

impl<'de> Deserialize<'de> for StepSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StepVisitor;

        impl<'de> Visitor<'de> for StepVisitor {
            type Value = StepSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a step table with `kind`")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StepSpec, A::Error> {
                let (mut kind, mut name, mut services, mut timeout) = (None, None, None, None);
                let mut options = toml::Table::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "kind" => kind = Some(map.next_value::<StepKind>()?),
                        "name" => name = map.next_value::<Option<String>>()?,
                        "services" => services = map.next_value::<Option<Vec<String>>>()?,
                        "timeout" => timeout = map.next_value::<Option<HumanDuration>>()?,
                        // A null (JSON snapshots of older versions wrote every option) is absent.
                        _ => {
                            let Some(value) = map.next_value::<Option<toml::Value>>()? else { continue };
                            if options.insert(key.clone(), value).is_some() {
                                return Err(de::Error::custom(format!("duplicate key `{key}`")));
                            }
                        }
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
                Ok(StepSpec { kind, name, services, timeout, options })
            }
        }

        deserializer.deserialize_map(StepVisitor)
    }
}
