//! `tenantry worker` and `tenantry serve` (scheduler, worker and, with `[api]`, the HTTP API): long-running processes that drain on SIGTERM.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{Context, Failure};

/// Cancels `token` on SIGTERM or Ctrl-C; a second signal exits at once.
fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("shutting down: no new work; in-flight tenants finish or give their lease back");
        token.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        std::process::exit(130);
    });
}

/// `tenantry worker`: runs tenants of any run until SIGTERM.
pub async fn worker(ctx: &Context) -> Result<(), Failure> {
    let runtime = ctx.runtime().await?;
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone());
    eprintln!("worker {} started (concurrency {})", runtime.worker_id, runtime.settings.worker_concurrency);
    let result = Arc::clone(&runtime).run(shutdown).await;
    runtime.databases.close().await;
    result.map_err(|e| Failure::Unreachable(e.to_string()))
}

/// `tenantry serve`: the scheduler and a worker in one process.
pub async fn serve(ctx: Context) -> Result<(), Failure> {
    let ctx = Arc::new(ctx);
    let runtime = ctx.runtime().await?;
    // Fail fast on a broken catalog or workflows: a scheduler that cannot plan is no use.
    ctx.checked_catalog().await?;
    let (workflows, problems) = crate::workflow::read_all(&ctx.config.workflows_dir());
    if !problems.is_empty() {
        return Err(Failure::Invalid(problems));
    }
    let loader_ctx = ctx.clone();
    let loader: crate::runtime::scheduler::CatalogLoader = Arc::new(move || {
        let ctx = loader_ctx.clone();
        Box::pin(async move { ctx.checked_catalog().await.map_err(|f| f.to_string()) })
    });
    let sched_ctx = crate::runtime::scheduler::Context {
        config: Arc::new(ctx.config.clone()),
        catalog: loader,
        clock: Arc::new(crate::runtime::clock::SystemClock),
    };
    let shutdown = CancellationToken::new();
    // The API's listener is bound before anything starts, so a taken address fails at once.
    let api = match &ctx.config.config.api {
        Some(api) => {
            let state = Arc::new(crate::api::ApiState::new(ctx.clone(), runtime.clone(), api)?);
            let listener = tokio::net::TcpListener::bind(&api.address)
                .await
                .map_err(|e| Failure::Failed(format!("api.address {}: cannot listen: {e}", api.address)))?;
            let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| api.address.clone());
            eprintln!("api listening on http://{address}");
            let shutdown = shutdown.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = crate::api::serve(listener, state, shutdown).await {
                    tracing::error!(error = %e, "the HTTP API stopped");
                }
            }))
        }
        None => None,
    };
    on_signal(shutdown.clone());
    let scheduled = workflows.iter().filter(|w| w.schedule.is_some()).count();
    eprintln!(
        "serve {}: {scheduled} scheduled workflow(s), worker concurrency {}",
        runtime.worker_id, runtime.settings.worker_concurrency
    );
    let scheduler =
        tokio::spawn(crate::runtime::scheduler::run(runtime.clone(), sched_ctx, workflows, shutdown.clone()));
    let result = Arc::clone(&runtime).run(shutdown.clone()).await;
    shutdown.cancel();
    let _ = scheduler.await;
    if let Some(mut api) = api {
        // Open connections get a moment to finish; a client that holds one open does not
        // hold the shutdown.
        if tokio::time::timeout(std::time::Duration::from_secs(10), &mut api).await.is_err() {
            api.abort();
        }
    }
    runtime.databases.close().await;
    result.map_err(|e| Failure::Unreachable(e.to_string()))
}
