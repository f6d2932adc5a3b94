//! `tenantry worker` and `tenantry serve`: long-running processes that drain on SIGTERM.

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
