//! The command line (SPEC §6): argument parsing, exit statuses, and one file per command.
//!
//! Data goes to stdout (`--json` for machines), logs and progress to stderr. Exit status:
//! 0 done; 1 the run or validation failed; 2 usage error; 3 a required service is unreachable.

pub(crate) mod backups;
mod context;
mod drift;
mod plan;
mod report;
mod restore;
pub(crate) mod runs;
mod serve;
mod tenants;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use context::{Context, Failure};

#[derive(Debug, Parser)]
#[command(name = "tenantry", version, about = "Durable, scheduled maintenance workflows for multi-tenant databases")]
pub struct Cli {
    /// Configuration file (default: ./tenantry.toml).
    #[arg(long, global = true, value_name = "FILE", env = "TENANTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override a configuration value, e.g. `--set redis.prefix=staging` (repeatable;
    /// applied after TENANTRY__SECTION__KEY environment variables).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the config, the catalog, every workflow and every migrations directory.
    Validate,
    /// Show what a workflow would do per wave and tenant; changes nothing.
    Plan {
        /// Workflow name (file name without .toml, or its `name`).
        workflow: String,
        /// Only these tenants (repeatable); each gets its own line.
        #[arg(long = "tenant", value_name = "ID")]
        tenants: Vec<String>,
        /// A line per tenant, rather than one per distinct plan with a count.
        #[arg(long, short)]
        verbose: bool,
    },
    /// The catalog as resolved: tenants, their status, labels and placements.
    Tenants,
    /// Compare every tenant's schema of a service with a reference (a named tenant, or the
    /// majority) and show how each differing tenant differs; exit 1 when any does.
    Drift {
        /// The service whose tenants to compare.
        service: String,
        /// Compare with this tenant instead of the majority.
        #[arg(long, value_name = "TENANT")]
        reference: Option<String>,
        /// Only these tenants (repeatable).
        #[arg(long = "tenant", value_name = "ID")]
        tenants: Vec<String>,
    },
    /// Backups in the object store with their sizes, ages and verification verdicts: every
    /// backup of TENANT, or a line per tenant and service.
    Backups {
        /// Only this tenant, with each of its backups.
        tenant: Option<String>,
        /// Only this service.
        #[arg(long, value_name = "S")]
        service: Option<String>,
        /// Only the tenants whose newest backup or newest passed verification is older than
        /// `[backups]` allows (active tenants, unless TENANT names one); exit 1 when any.
        #[arg(long)]
        stale: bool,
    },
    /// Restore a tenant's newest complete backup of a service (or --backup KEY) into its own
    /// database or schema, or --into another one on its host. The backup is restored beside
    /// the target, checked against its manifest (SHA-256, tables, row counts, schema
    /// version), and only then put in the target's place; a target that holds anything is
    /// refused unless --force.
    Restore {
        tenant: String,
        /// The service whose backup to restore.
        #[arg(long, value_name = "S")]
        service: String,
        /// A backup folder (`20261124T230501Z_RUN`, or `service/tenant/folder`); default:
        /// the newest complete backup (see `tenantry backups TENANT`).
        #[arg(long, value_name = "KEY")]
        backup: Option<String>,
        /// Another database (database isolation) or schema in the tenant's database (schema
        /// isolation) on the tenant's host; never another tenant's placement.
        #[arg(long, value_name = "DATABASE|SCHEMA")]
        into: Option<String>,
        /// Replace a target that holds something (its sessions are ended; see the README).
        #[arg(long)]
        force: bool,
    },
    /// Enqueue a one-off run of a workflow.
    Run {
        workflow: String,
        /// Only these tenants (repeatable).
        #[arg(long = "tenant", value_name = "ID")]
        tenants: Vec<String>,
        /// Follow the run with progress bars until it ends; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// Only the tenants whose migrations RUN changed ("undo only what we did", with a
        /// workflow whose migrate step has `to = VERSION`).
        #[arg(long, value_name = "RUN")]
        changed_by: Option<String>,
    },
    /// Recent runs, newest first.
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Per-wave, per-tenant progress of a run.
    Status {
        run: String,
        /// Refresh every second until the run ends.
        #[arg(long)]
        watch: bool,
        /// A line per tenant, rather than one per distinct state and reason with a count.
        #[arg(long, short)]
        verbose: bool,
    },
    /// A run's outcome as Markdown (`--json`: the same data): tenants per state, the ones
    /// that failed and why, and what each step found across the fleet.
    Report { run: String },
    /// Let a run waiting in awaiting_approval go on.
    Approve { run: String },
    /// Stop dispatching tenants of a run (in-flight tenants finish).
    Pause { run: String },
    /// Dispatch again after pause.
    Resume { run: String },
    /// Stop a run: no more tenants start; in-flight tenants stop after their current step.
    Cancel { run: String },
    /// Re-run only the tenants that failed, as a new run linked to the old one.
    Retry {
        run: String,
        #[arg(long)]
        wait: bool,
    },
    /// Run workers only (scale out: any number of processes on any number of machines).
    Worker,
    /// Scheduler and worker in one process (run any number of replicas: each tick is
    /// enqueued once).
    Serve,
}

/// Parses arguments, runs the command and maps the outcome to the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(run(cli));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.report();
            ExitCode::from(failure.code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = match Context::load(cli.config.as_deref(), &cli.sets) {
        Ok(ctx) => ctx,
        // For validate, problems in the config file are its output like any others.
        Err(Failure::Invalid(problems)) if matches!(cli.command, Command::Validate) => {
            validate::print_problems(&problems, cli.json);
            return Err(Failure::Reported);
        }
        Err(e) => return Err(e),
    };
    match &cli.command {
        Command::Validate => validate::run(&ctx, cli.json).await,
        Command::Plan { workflow, tenants, verbose } => {
            plan::run(&ctx, workflow, tenants, *verbose || !tenants.is_empty(), cli.json).await
        }
        Command::Tenants => tenants::run(&ctx, cli.json).await,
        Command::Drift { service, reference, tenants } => {
            drift::run(&ctx, service, reference.as_deref(), tenants, cli.json).await
        }
        Command::Backups { tenant, service, stale } => {
            backups::run(&ctx, tenant.as_deref(), service.as_deref(), *stale, cli.json).await
        }
        Command::Restore { tenant, service, backup, into, force } => {
            let request =
                restore::Request { tenant, service, backup: backup.as_deref(), into: into.as_deref(), force: *force };
            restore::run(&ctx, &request, cli.json).await
        }
        Command::Run { workflow, tenants, wait, changed_by } => {
            runs::run(&ctx, workflow, tenants, changed_by.as_deref(), *wait, cli.json).await
        }
        Command::Runs { limit } => runs::list(&ctx, *limit, cli.json).await,
        Command::Status { run, watch, verbose } => runs::status(&ctx, run, *watch, *verbose, cli.json).await,
        Command::Report { run } => report::run(&ctx, run, cli.json).await,
        Command::Approve { run } => runs::control(&ctx, run, "approve", cli.json).await,
        Command::Pause { run } => runs::control(&ctx, run, "pause", cli.json).await,
        Command::Resume { run } => runs::control(&ctx, run, "resume", cli.json).await,
        Command::Cancel { run } => runs::control(&ctx, run, "cancel", cli.json).await,
        Command::Retry { run, wait } => runs::retry(&ctx, run, *wait, cli.json).await,
        Command::Worker => serve::worker(&ctx).await,
        Command::Serve => serve::serve(ctx).await,
    }
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TENANTRY_LOG").unwrap_or_else(|_| "warn,apalis_core=off".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
