//! `tenantry validate`: every problem of config, catalog, migrations directories and workflows as `FILE:LINE:COL: message`.

use serde::Serialize;

use super::{Context, Failure};
use crate::diagnostic::Diagnostic;
use crate::migrations::MigrationSet;
use crate::workflow::{self, CheckContext};

#[derive(Serialize)]
struct Report {
    ok: bool,
    problems: Vec<Diagnostic>,
    services: usize,
    tenants: usize,
    workflows: usize,
    migrations: usize,
}

pub async fn run(ctx: &Context, json: bool) -> Result<(), Failure> {
    let loaded = &ctx.config;
    let mut problems = ctx.config_problems();

    // The catalog: an unreachable catalog database is exit 3, after the file problems.
    let (catalog, tenant_problems) = match ctx.catalog().await {
        Ok(c) => c,
        Err(Failure::Unreachable(message)) => {
            print_problems(&problems, json);
            return Err(Failure::Unreachable(message));
        }
        Err(Failure::Invalid(more)) => {
            problems.extend(more);
            print_problems(&problems, json);
            return Err(Failure::Reported);
        }
        Err(other) => return Err(other),
    };
    problems.extend(tenant_problems);

    let mut migrations = 0;
    for service in loaded.config.services.values() {
        if let Some(dir) = &service.migrations {
            let dir = loaded.resolve_path(dir);
            if dir.is_dir() {
                let (set, found) = MigrationSet::scan(&dir);
                migrations += set.migrations.len();
                problems.extend(found);
            }
        }
    }

    let (workflows, found) = workflow::read_all(&loaded.workflows_dir());
    problems.extend(found);
    let check_ctx = CheckContext { services: &loaded.config.services, catalog: Some(&catalog) };
    let mut warnings = Vec::new();
    for w in &workflows {
        problems.extend(workflow::check(&w.spec, &w.name, &w.source, &check_ctx));
        warnings.extend(workflow::warnings(&w.spec, &w.source, &loaded.config.services, Some(&catalog)));
    }
    // Warnings go to stderr and do not change the exit status: the files are valid.
    for w in &warnings {
        eprintln!("{w}");
    }

    let report = Report {
        ok: problems.is_empty(),
        services: loaded.config.services.len(),
        tenants: catalog.tenants.len(),
        workflows: workflows.len(),
        migrations,
        problems,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
    } else if report.ok {
        println!(
            "ok: {} — {} service(s), {} tenant(s), {} workflow(s), {} migration(s)",
            loaded.source.path.display(),
            report.services,
            report.tenants,
            report.workflows,
            report.migrations
        );
    } else {
        print_problems(&report.problems, false);
    }
    if report.ok { Ok(()) } else { Err(Failure::Reported) }
}

/// Problems on stdout (they are validate's output), one per line, then a count.
pub fn print_problems(problems: &[Diagnostic], json: bool) {
    if json {
        let report = serde_json::json!({ "ok": problems.is_empty(), "problems": problems });
        println!("{}", serde_json::to_string_pretty(&report).expect("report serialises"));
    } else {
        for p in problems {
            println!("{p}");
        }
        println!("{} problem(s) found", problems.len());
    }
}
