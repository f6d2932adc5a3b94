//! The RDS API for tenants on a managed instance of their own: the client of `[rds]` (opened once per process, on first use), errors classified for retries, the identifiers and tags tenantry gives snapshots and temporary instances, and bounded, resumable waits.
//!
//! Nothing here keeps state between attempts: an attempt finds what an earlier one made by
//! its name, which is derived from the tenant and the run, and learns when the earlier one
//! asked for it from the [`TAG_REQUESTED_AT`] tag. So a retry, or the worker that takes
//! over from one killed mid-wait, waits for the same snapshot or instance instead of
//! making a second one, and the wait's bound counts from the first request.

use std::future::Future;
use std::time::Duration;

use aws_sdk_rds::Client;
use aws_sdk_rds::config::http::HttpResponse;
use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_rds::types::Tag;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::config::RdsConfig;
use crate::runtime::clock::Clock;
use crate::steps::StepError;

/// Every snapshot and temporary instance tenantry makes has a name starting with this,
/// and nothing else is ever deleted.
pub const NAME_PREFIX: &str = "tenantry-";

/// Tags on what tenantry makes: whose it is, which run and step made it, and when it was
/// first asked for (RFC 3339; the start of every bounded wait for it).
pub const TAG_TENANT: &str = "tenantry:tenant";
pub const TAG_SERVICE: &str = "tenantry:service";
pub const TAG_RUN: &str = "tenantry:run";
pub const TAG_STEP: &str = "tenantry:step";
pub const TAG_REQUESTED_AT: &str = "tenantry:requested-at";

/// RDS codes of a resource in a passing state (busy with a backup, a modification, a
/// deletion): another attempt can succeed.
const BUSY: [&str; 3] = ["InvalidDBInstanceState", "InvalidDBSnapshotState", "InvalidDBInstanceStateFault"];

/// The first pause between two polls of a wait; each pause doubles up to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(500);
const POLL_MAX: Duration = Duration::from_secs(20);

/// The RDS API of this process's `[rds]`, opened on first use: a worker whose workflows
/// never use it never resolves a region or credentials (which can mean probing for an
/// instance role).
pub struct Rds {
    config: RdsConfig,
    client: OnceCell<Result<Client, String>>,
}

impl Rds {
    pub fn new(config: Option<RdsConfig>) -> Self {
        Self { config: config.unwrap_or_default(), client: OnceCell::new() }
    }

    /// The client; `Err` (permanent) when there is no region to call.
    pub async fn client(&self) -> Result<&Client, StepError> {
        let opened = self.client.get_or_init(|| open(&self.config)).await;
        opened.as_ref().map_err(|e| StepError::permanent(e.clone()))
    }
}

async fn open(config: &RdsConfig) -> Result<Client, String> {
    let keys = config.access_key_id.as_deref().zip(config.secret_access_key.as_ref());
    let shared = crate::aws::sdk_config(config.region.as_deref(), keys).await;
    let mut builder = aws_sdk_rds::config::Builder::from(&shared);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint);
        if shared.region().is_none() {
            builder = builder.region(aws_config::Region::new(crate::aws::EMULATOR_REGION));
        }
    } else if shared.region().is_none() {
        return Err("no AWS region for the RDS API: set rds.region in the config, or AWS_REGION".to_string());
    }
    Ok(Client::from_conf(builder.build()))
}

/// A step error from an RDS call; `what` says what was being done, for whom.
pub fn error<E>(what: &str, e: SdkError<E, HttpResponse>) -> StepError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = format!("{what}: RDS API: {}", crate::aws::detail(&e));
    if crate::aws::is_transient(&e, &BUSY) { StepError::transient(message) } else { StepError::permanent(message) }
}

/// The error code of an RDS answer (`DBSnapshotNotFound`, `DBInstanceAlreadyExists`, ...).
pub fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// Whether `id` is a valid RDS DB instance identifier: 1 to 63 letters, digits and
/// hyphens, a letter first, no hyphen last or twice in a row (RDS keeps it lower-case).
pub fn check_instance_id(id: &str) -> Result<(), String> {
    check_id(id).map_err(|why| format!("{id:?} is not an RDS DB instance identifier: {why}"))
}

fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > 63 {
        return Err("it must be 1 to 63 characters");
    }
    if !id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("it must begin with a letter");
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("it may hold only letters, digits and hyphens");
    }
    if id.ends_with('-') || id.contains("--") {
        return Err("it must not end with a hyphen or hold two in a row");
    }
    Ok(())
}

/// `s` as the lower-case letters, digits and single hyphens an identifier may hold
/// (`acme_corp` -> `acme-corp`), at most `max` bytes, without a hyphen at either end.
pub fn identifier_part(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        if out.len() == max {
            break;
        }
        out.push(c);
    }
    out.trim_end_matches('-').to_string()
}

/// Hex digits of the SHA-256 of `parts` (each ended by a NUL, so ("a", "bc") and ("ab",
/// "c") differ).
pub fn digest(parts: &[&str], len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..len].to_string()
}

/// The tags of something tenantry makes for a tenant's step.
pub fn tags(tenant: &str, service: &str, run: &str, step: &str, requested_at: DateTime<Utc>) -> Vec<Tag> {
    [
        (TAG_TENANT, tenant.to_string()),
        (TAG_SERVICE, service.to_string()),
        (TAG_RUN, run.to_string()),
        (TAG_STEP, step.to_string()),
        (TAG_REQUESTED_AT, requested_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    ]
    .into_iter()
    .map(|(k, v)| Tag::builder().key(k).value(v).build())
    .collect()
}

/// The value of tag `key`.
pub fn tag<'t>(tags: &'t [Tag], key: &str) -> Option<&'t str> {
    tags.iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// When a snapshot or instance was first asked for, from its tag.
pub fn requested_at(tags: &[Tag]) -> Option<DateTime<Utc>> {
    tag(tags, TAG_REQUESTED_AT).and_then(|v| DateTime::parse_from_rfc3339(v).ok()).map(|t| t.with_timezone(&Utc))
}

/// One poll of a wait.
pub enum Polled<T> {
    /// What was waited for.
    Ready(T),
    /// Not yet; the status seen.
    Pending(String),
}

/// Polls until `poll` is ready, pausing [`POLL_FIRST`], then twice as long each time up to
/// [`POLL_MAX`], never past `deadline` (wall time, so that a resumed wait keeps the bound
/// of the first). On the deadline: a permanent error that says what was seen last, then
/// `then` (what becomes of it). `cancel` stops the wait between two polls.
pub async fn wait<T, F, Fut>(
    what: &str,
    then: &str,
    deadline: DateTime<Utc>,
    clock: &dyn Clock,
    cancel: &CancellationToken,
    mut poll: F,
) -> Result<(T, u32), StepError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Polled<T>, StepError>>,
{
    let mut pause = POLL_FIRST;
    let mut polls = 0u32;
    loop {
        polls += 1;
        let status = match poll().await? {
            Polled::Ready(value) => return Ok((value, polls)),
            Polled::Pending(status) => status,
        };
        let left = (deadline - clock.now()).to_std().unwrap_or(Duration::ZERO);
        if left.is_zero() {
            return Err(StepError::permanent(format!(
                "{what}: still {status} at the end of the wait ({polls} polls, until {}; the step's wait_timeout, counted from the first request); {then}",
                deadline.format("%Y-%m-%d %H:%M:%S UTC")
            )));
        }
        tokio::select! {
            () = tokio::time::sleep(pause.min(left)) => {}
            () = cancel.cancelled() => return Err(StepError::transient(format!("{what}: the wait was stopped (status {status})"))),
        }
        pause = (pause * 2).min(POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_identifiers_follow_rds_rules() {
        assert!(check_instance_id("tenant-acme").is_ok());
        assert!(check_instance_id("a").is_ok());
        for bad in ["", "1abc", "tenant_acme", "tenant--acme", "tenant-", &"a".repeat(64)] {
            assert!(check_instance_id(bad).is_err(), "{bad}");
        }
        assert!(check_instance_id("tenant_acme").unwrap_err().contains("only letters, digits and hyphens"));
    }

    #[test]
    fn identifier_parts_are_lower_case_single_hyphens() {
        assert_eq!(identifier_part("acme_corp", 63), "acme-corp");
        assert_eq!(identifier_part("_a__b-", 63), "a-b");
        assert_eq!(identifier_part("abcdef", 3), "abc");
        assert_eq!(identifier_part("ab_cd", 3), "ab");
        assert_eq!(digest(&["a", "bc"], 8).len(), 8);
        assert_ne!(digest(&["a", "bc"], 8), digest(&["ab", "c"], 8));
    }

    #[test]
    fn tags_carry_the_request_time() {
        let at = DateTime::parse_from_rfc3339("2026-11-24T23:05:01.250Z").unwrap().with_timezone(&Utc);
        let tags = tags("acme", "core", "r1", "rds_snapshot", at);
        assert_eq!(tag(&tags, TAG_TENANT), Some("acme"));
        assert_eq!(requested_at(&tags), Some(at));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_backs_off_and_stops_at_its_deadline() {
        let clock = crate::runtime::clock::TokioClock::starting_at(Utc::now());
        let cancel = CancellationToken::new();
        let mut n = 0;
        let (value, polls) = wait("x", "", clock.now() + chrono::TimeDelta::seconds(60), &clock, &cancel, || {
            n += 1;
            let ready = n == 4;
            async move { Ok(if ready { Polled::Ready(n) } else { Polled::Pending("creating".into()) }) }
        })
        .await
        .unwrap();
        assert_eq!((value, polls), (4, 4));
        let deadline = clock.now() + chrono::TimeDelta::seconds(30);
        let e = wait("snapshot s", "left", deadline, &clock, &cancel, || async {
            Ok::<Polled<()>, StepError>(Polled::Pending("creating".into()))
        })
        .await
        .unwrap_err();
        assert!(!e.is_transient());
        assert!(e.message.contains("snapshot s: still creating"), "{e}");
        assert!(clock.now() >= deadline && clock.now() < deadline + chrono::TimeDelta::seconds(1));
    }
}
