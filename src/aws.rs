//! What the S3 store and the RDS API share of the AWS SDK: the region, static keys or the standard credential chain, and whether an SDK error is worth retrying.

// The SDK crates re-export the same smithy and credential types; the S3 crate's names
// serve for both.
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::secret::Secret;

/// The shared SDK settings of one `[storage]` or `[rds]` section: its region (else the
/// AWS default chain's: `AWS_REGION`, the profile), and its static keys when both are
/// set, else the standard AWS credential chain (environment, profile, web identity,
/// instance or task role). The keys reach the SDK only; they are never shown.
pub async fn sdk_config(region: Option<&str>, keys: Option<(&str, &Secret)>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    if let Some((id, secret)) = keys {
        loader = loader.credentials_provider(Credentials::new(id, secret.expose(), None, None, "tenantry-config"));
    }
    loader.load().await
}

/// The region servers other than AWS get when none is configured: they ignore it, but the
/// signer needs one.
pub const EMULATOR_REGION: &str = "us-east-1";

/// Whether another attempt can help: the network, a timeout, a 5xx, a throttled request,
/// or one of `busy` (codes that say the resource is in a state that passes, such as RDS's
/// `InvalidDBInstanceState`). A request that cannot be built, and every other answer of
/// the service (access denied, not found, a quota, a bad parameter), fails the same way
/// every time.
pub fn is_transient<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>, busy: &[&str]) -> bool {
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            status >= 500
                || status == 429
                || s.err().code().is_some_and(|code| {
                    matches!(
                        code,
                        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "SlowDown" | "RequestTimeout"
                    ) || busy.contains(&code)
                })
        }
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    }
}

/// "Code: message" of a service's answer, or the SDK's whole error chain (a network
/// error's cause is several sources down).
pub fn detail<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match e.code() {
        Some(code) => format!("{code}: {}", e.message().unwrap_or("")),
        None => DisplayErrorContext(e).to_string(),
    }
}
