//! `tenantry report RUN [--json]`: prints a run's report ([`crate::runtime::run_report`]) as Markdown, or as JSON with the same data; changes nothing.

use super::{Context, Failure};
use crate::runtime::run_report;

pub async fn run(ctx: &Context, id: &str, json: bool) -> Result<(), Failure> {
    let runtime = ctx.runtime().await?;
    let record = runtime.store.record(id).await.map_err(super::runs::store_failure)?;
    let spec = runtime.store.spec(id).await.map_err(super::runs::store_failure)?;
    let tenants = runtime.store.checkpoints(id).await.map_err(super::runs::store_failure)?;
    let report = run_report::build(&spec, &record, &tenants);
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serialises"));
    } else {
        print!("{}", run_report::markdown(&report));
    }
    Ok(())
}
