//! What a step kind defines — its options, where it fits, its checks, its plan and its run — as the [`Step`] trait each kind's file implements, and the glue that gives validate, plan and the worker one object per kind.
//!
//! A new kind is one file with a unit struct implementing [`Step`], and one line in
//! [`super::StepKind::def`]. Nothing in the worker, `validate` or `plan` changes: they ask
//! the registry.

use std::future::Future;
use std::marker::PhantomData;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use super::{StepContext, StepError, StepSpec};
use crate::catalog::{Catalog, Engine, Placement, ServiceSpec};
use crate::config::LoadedConfig;
use crate::workflow::plan::StepAction;

/// Problems found in a step's options: (option name, message). `validate` points at the
/// option's value in the file.
pub type Findings = Vec<(String, String)>;

/// What `plan` gives a kind to look at the fleet with.
#[derive(Clone, Copy)]
pub struct PlanEnv<'a> {
    pub catalog: &'a Catalog,
    pub config: &'a LoadedConfig,
    /// The tenant of each of the targets `plan` is asked about, in the same order (a
    /// placement does not name its tenant, and `row` placements are shared by many).
    pub tenants: &'a [&'a str],
}

/// One step kind, implemented by a unit struct in the kind's own file.
pub trait Step: Send + Sync + 'static {
    /// The kind's options besides the common ones (`kind`, `name`, `services`, `timeout`):
    /// a struct whose fields are all optional (`#[serde(default)]`), named as in workflow
    /// files. Its field names are the options `validate` accepts for the kind.
    type Options: DeserializeOwned + Default + Send + Sync;

    /// Whether a step of this kind can run on a service at all; `Err` says why not. A
    /// workflow naming such a service is invalid; without `services`, the step skips it.
    fn fits(_service: &ServiceSpec) -> Result<(), String> {
        Ok(())
    }

    /// Checks of option values that serde cannot express, as (option, message).
    fn check(_options: &Self::Options, _out: &mut Findings) {}

    /// What a tenant's placement must have for the kind besides a service it fits (its own
    /// RDS instance, say); `Err` says what is missing and how to add it. `validate` warns
    /// about each target without it, `plan` shows the step as blocked there, and a run
    /// fails the step there with the reason (permanent).
    fn needs(_placement: &Placement, _tenant: &str) -> Result<(), String> {
        Ok(())
    }

    /// Whether this version of tenantry runs the kind on `engine`; `Err` says why, as a
    /// phrase after the kind's name ("is not supported on mariadb yet"), and makes `plan`
    /// show the step as blocked and `validate` warn. The default: PostgreSQL only.
    fn runs_on(engine: Engine) -> Result<(), String> {
        postgres_only(engine)
    }

    /// What `plan` shows for this step on each of `targets` (same order). The default:
    /// it runs. A kind that can tell more from the databases reads them in bulk here.
    fn plan<'a>(
        _options: &'a Self::Options,
        targets: &'a [&'a Placement],
        _env: PlanEnv<'a>,
    ) -> impl Future<Output = Vec<StepAction>> + Send + 'a {
        std::future::ready(vec![StepAction::Run; targets.len()])
    }

    /// The catalog labels the step reads per tenant (a purge's `retention_label`): a run
    /// snapshots their values with the tenant, and the step finds them in
    /// [`StepContext::labels`]. The default: none.
    fn labels(_options: &Self::Options) -> Vec<String> {
        Vec::new()
    }

    /// Whether `plan` chooses which targets run (a sample): a run then asks the plan when it
    /// is created and records the targets it answers [`StepAction::Skip`] for as skipped,
    /// with the plan's reason, so that what `plan` shows and what a run does cannot
    /// disagree. The default: no, every target runs.
    fn selects(_options: &Self::Options) -> bool {
        false
    }

    /// Runs the step on one tenant's target (one unit). The result is what the step
    /// reports, stored in the tenant's checkpoint.
    fn run<'a>(
        ctx: &'a StepContext<'a>,
        options: &'a Self::Options,
    ) -> impl Future<Output = Result<serde_json::Value, StepError>> + Send + 'a;
}

/// The "PostgreSQL only, for now" answer of [`Step::runs_on`].
pub fn postgres_only(engine: Engine) -> Result<(), String> {
    match engine {
        Engine::Postgres => Ok(()),
        other => Err(format!("is not supported on {other} yet")),
    }
}

/// A kind as the rest of tenantry sees it: [`Step`] without its types.
pub trait Kind: Sync {
    fn options(&self) -> &'static [&'static str];
    fn fits(&self, service: &ServiceSpec) -> Result<(), String>;
    fn needs(&self, placement: &Placement, tenant: &str) -> Result<(), String>;
    /// Every problem of a step's options: values of the wrong type and failed checks.
    /// Options the kind does not take are `validate`'s to report (with their names).
    fn check(&self, step: &StepSpec) -> Findings;
    fn runs_on(&self, engine: Engine) -> Result<(), String>;
    fn plan<'a>(
        &'a self,
        step: &'a StepSpec,
        targets: &'a [&'a Placement],
        env: PlanEnv<'a>,
    ) -> BoxFuture<'a, Vec<StepAction>>;
    /// Whether a run asks this step's plan which targets to skip (see [`Step::selects`]).
    fn selects(&self, step: &StepSpec) -> bool;
    /// The tenant labels a run snapshots for this step (see [`Step::labels`]).
    fn labels(&self, step: &StepSpec) -> Vec<String>;
    fn run<'a>(&'a self, ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<serde_json::Value, StepError>>;
}

/// The [`Kind`] of a [`Step`]; see [`registered`].
struct Registered<S>(PhantomData<S>);

/// The registry entry of a kind.
pub const fn registered<S: Step>() -> &'static dyn Kind {
    &Registered::<S>(PhantomData)
}

impl<S: Step> Kind for Registered<S> {
    fn options(&self) -> &'static [&'static str] {
        field_names::<S::Options>()
    }

    fn fits(&self, service: &ServiceSpec) -> Result<(), String> {
        S::fits(service)
    }

    fn needs(&self, placement: &Placement, tenant: &str) -> Result<(), String> {
        S::needs(placement, tenant)
    }

    fn check(&self, step: &StepSpec) -> Findings {
        let mut out = Findings::new();
        let known = self.options();
        let given: toml::Table = step
            .options
            .iter()
            .filter(|(k, _)| known.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match parse::<S::Options>(&given) {
            Ok(options) => S::check(&options, &mut out),
            // Find the options at fault: each alone.
            Err(_) => {
                for (key, value) in given {
                    let one = toml::Table::from_iter([(key.clone(), value)]);
                    if let Err(e) = parse::<S::Options>(&one) {
                        out.push((key, e));
                    }
                }
            }
        }
        out
    }

    fn runs_on(&self, engine: Engine) -> Result<(), String> {
        S::runs_on(engine)
    }

    fn plan<'a>(
        &'a self,
        step: &'a StepSpec,
        targets: &'a [&'a Placement],
        env: PlanEnv<'a>,
    ) -> BoxFuture<'a, Vec<StepAction>> {
        Box::pin(async move {
            match parse::<S::Options>(&step.options) {
                Ok(options) => S::plan(&options, targets, env).await,
                Err(reason) => vec![StepAction::Blocked { reason }; targets.len()],
            }
        })
    }

    fn selects(&self, step: &StepSpec) -> bool {
        parse::<S::Options>(&step.options).is_ok_and(|options| S::selects(&options))
    }

    fn labels(&self, step: &StepSpec) -> Vec<String> {
        parse::<S::Options>(&step.options).map(|options| S::labels(&options)).unwrap_or_default()
    }

    fn run<'a>(&'a self, ctx: &'a StepContext<'a>) -> BoxFuture<'a, Result<serde_json::Value, StepError>> {
        Box::pin(async move {
            ctx.step.kind.runs_on(ctx.placement.engine).map_err(StepError::permanent)?;
            S::needs(ctx.placement, ctx.tenant).map_err(StepError::permanent)?;
            let options = parse::<S::Options>(&ctx.step.options).map_err(StepError::permanent)?;
            S::run(ctx, &options).await
        })
    }
}

/// A kind's options from a step's table of them (unknown options are an error).
pub fn parse<O: DeserializeOwned>(options: &toml::Table) -> Result<O, String> {
    toml::Value::Table(options.clone()).try_into::<O>().map_err(|e| first_line(&e.to_string()))
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

/// The field names of a struct deserialized by serde's derive (`#[serde(rename)]`s
/// included), read from what it asks its deserializer for; empty for anything else.
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Fields<'f>(&'f mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Options {
        batch_size: Option<u32>,
        #[serde(rename = "older-than")]
        _older_than: Option<String>,
    }

    #[test]
    fn field_names_are_the_options() {
        assert_eq!(field_names::<Options>(), &["batch_size", "older-than"]);
        assert!(field_names::<u32>().is_empty());
    }

    #[test]
    fn parse_reports_wrong_types_and_unknown_options() {
        let table: toml::Table = toml::from_str("batch_size = 10").unwrap();
        assert_eq!(parse::<Options>(&table).unwrap().batch_size, Some(10));
        let table: toml::Table = toml::from_str("batch_size = \"ten\"").unwrap();
        assert!(parse::<Options>(&table).unwrap_err().contains("invalid type"));
        let table: toml::Table = toml::from_str("bogus = 1").unwrap();
        assert!(parse::<Options>(&table).unwrap_err().contains("bogus"));
    }
}
