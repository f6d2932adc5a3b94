//! The lease's fence as a step sees it: the check a step makes right before an effect that no receipt covers.
//!
//! The rule for step authors: an effect that commits together with a receipt in the
//! tenant's database (the `sql` and `seed` steps, a migration with its history row) is
//! protected by that receipt and needs no fence. Every other effect — writing an object or a
//! manifest, deleting a batch of rows in its own transaction, creating or deleting a
//! snapshot, dropping a scratch database — calls [`Fence::check`] immediately before it, and
//! does not perform the effect when the check fails. A worker whose lease was taken over
//! (it stalled, Redis expired its lease, the sweep gave the tenant to another worker) is
//! then refused, instead of acting at the same time as the new owner.
//!
//! The check is a read of the lease key (one Redis round trip) plus the local knowledge of
//! the heartbeat: once a renewal failed or came back too late, the fence is closed without
//! asking Redis.

use tokio_util::sync::CancellationToken;

use super::store::RunStore;
use crate::steps::StepError;

/// One lease: the run, the tenant and the holder ("worker|fencing token") it was granted to.
#[derive(Clone)]
pub struct Fence {
    /// None for a step run outside the runtime (an operator's one-off command, a
    /// benchmark): there is no lease, nobody else can own the tenant, checks pass.
    store: Option<RunStore>,
    run: String,
    tenant: String,
    holder: String,
    /// Cancelled by the heartbeat when the lease is lost or the run was cancelled.
    lost: CancellationToken,
}

impl Fence {
    pub fn new(store: RunStore, run: &str, tenant: &str, holder: &str, lost: CancellationToken) -> Self {
        Self { store: Some(store), run: run.to_string(), tenant: tenant.to_string(), holder: holder.to_string(), lost }
    }

    /// No lease: for steps that an operator's command or a benchmark runs directly.
    pub fn none(run: &str, tenant: &str) -> Self {
        Self {
            store: None,
            run: run.to_string(),
            tenant: tenant.to_string(),
            holder: String::new(),
            lost: CancellationToken::new(),
        }
    }

    /// Ok while this worker still holds the lease. Call it right before an effect that no
    /// receipt covers; on `Err`, do not perform the effect. A Redis error is transient (the
    /// effect is not performed now; the step may be retried).
    pub async fn check(&self) -> Result<(), StepError> {
        if self.lost.is_cancelled() {
            return Err(self.refused());
        }
        let Some(store) = &self.store else { return Ok(()) };
        match store.holds(&self.run, &self.tenant, &self.holder).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.lost.cancel();
                Err(self.refused())
            }
            Err(e) => {
                Err(StepError::transient(format!("cannot check the lease before an effect (not performed): {e}")))
            }
        }
    }

    fn refused(&self) -> StepError {
        StepError::fenced(format!(
            "tenant {} of run {}: this worker ({}) no longer holds the lease; the effect was not performed (another worker owns the tenant now)",
            self.tenant, self.run, self.holder
        ))
    }
}
