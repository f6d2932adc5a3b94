//! The HTTP API of `tenantry serve` (axum): runs (list, detail, report, enqueue, approve, pause, resume, cancel, retry), workflows with their next scheduled tick, tenants, backups with their freshness, and the probes `/healthz` and `/readyz`; JSON with the field names of the CLI's `--json`; bearer tokens, read-only or operator, compared in constant time.
//!
//! The routes are listed in [`ROUTES`] and described in `docs/openapi.json`; a test checks
//! the two against each other and against the running server. Token values come from the
//! environment or a file named in `[api]` and are never logged or returned; errors are
//! `{"error": "..."}` with a status that says what kind of problem it is (401 no or unknown
//! token, 403 a read-only token on a write, 404 no such run or workflow, 409 the run's
//! state refuses the action, 422 bad input, 503 Redis unreachable).

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::cli::{Context, Failure, runs};
use crate::config::{ApiConfig, ApiRole};
use crate::runtime::worker::Runtime;

/// Every route: (method, path as in `docs/openapi.json`).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/api/v1/runs"),
    ("POST", "/api/v1/runs"),
    ("GET", "/api/v1/runs/{id}"),
    ("GET", "/api/v1/runs/{id}/report"),
    ("POST", "/api/v1/runs/{id}/approve"),
    ("POST", "/api/v1/runs/{id}/pause"),
    ("POST", "/api/v1/runs/{id}/resume"),
    ("POST", "/api/v1/runs/{id}/cancel"),
    ("POST", "/api/v1/runs/{id}/retry"),
    ("GET", "/api/v1/workflows"),
    ("GET", "/api/v1/tenants"),
    ("GET", "/api/v1/backups"),
];

/// A token as the server holds it: its name, role and the SHA-256 of its value (the value
/// itself is not kept).
struct Token {
    name: String,
    role: ApiRole,
    digest: [u8; 32],
}

pub struct ApiState {
    ctx: Arc<Context>,
    runtime: Arc<Runtime>,
    tokens: Vec<Token>,
}

impl ApiState {
    /// Reads the tokens' values from their variables and files. A missing or empty one is
    /// an error naming the token and where it was looked for, never a value.
    pub fn new(ctx: Arc<Context>, runtime: Arc<Runtime>, api: &ApiConfig) -> Result<Self, Failure> {
        let mut tokens = Vec::new();
        for t in &api.tokens {
            if tokens.iter().any(|k: &Token| k.name == t.name) {
                return Err(Failure::Failed(format!("api token {:?} is configured twice", t.name)));
            }
            let value = match (&t.env, &t.file) {
                (Some(var), _) => std::env::var(var).map_err(|_| {
                    Failure::Failed(format!("api token {:?}: the environment variable {var} is not set", t.name))
                })?,
                (None, Some(file)) => {
                    let path = ctx.config.resolve_path(file);
                    std::fs::read_to_string(&path).map_err(|e| {
                        Failure::Failed(format!("api token {:?}: cannot read {}: {e}", t.name, path.display()))
                    })?
                }
                (None, None) => {
                    return Err(Failure::Failed(format!("api token {:?} has neither env nor file", t.name)));
                }
            };
            let value = value.trim();
            if value.len() < 16 {
                return Err(Failure::Failed(format!(
                    "api token {:?} is shorter than 16 characters: use a long random value (e.g. `openssl rand -hex 32`)",
                    t.name
                )));
            }
            let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            if let Some(same) = tokens.iter().find(|k| k.digest == digest) {
                return Err(Failure::Failed(format!(
                    "api tokens {:?} and {:?} have the same value: give each holder its own",
                    same.name, t.name
                )));
            }
            tokens.push(Token { name: t.name.clone(), role: t.role, digest });
        }
        Ok(Self { ctx, runtime, tokens })
    }

    /// The role of the token presented, comparing digests in constant time (every token
    /// is compared, whichever matches).
    fn role_of(&self, presented: &str) -> Option<(&str, ApiRole)> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.digest.ct_eq(&digest)) {
                found = Some((t.name.as_str(), t.role));
            }
        }
        found
    }
}

/// The router, with authentication in front of everything but the probes.
pub fn router(state: Arc<ApiState>) -> Router {
    let api = Router::new()
        .route("/api/v1/runs", get(list_runs).post(enqueue))
        .route("/api/v1/runs/{id}", get(run_detail))
        .route("/api/v1/runs/{id}/report", get(run_report))
        .route("/api/v1/runs/{id}/retry", post(retry))
        .route("/api/v1/runs/{id}/{action}", post(control))
        .route("/api/v1/workflows", get(workflows))
        .route("/api/v1/tenants", get(tenants))
        .route("/api/v1/backups", get(backups))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route (see docs/openapi.json)") })
        .with_state(state)
}

/// Connections served at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 256;
/// A client that has not sent a whole request head by then is disconnected.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router(state)` on `listener` until `shutdown`, then lets open connections
/// finish their request (the caller bounds how long). Bounded: at most
/// [`MAX_CONNECTIONS`] at once, and a request head must arrive within
/// [`HEADER_READ_TIMEOUT`], so slow or idle clients cannot hold the process.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "api: accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("api: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn authenticate(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some((name, role)) = presented.and_then(|p| state.role_of(p)) else {
        tracing::info!(method = %request.method(), path = request.uri().path(), "api request without a known token refused");
        let mut response =
            error(StatusCode::UNAUTHORIZED, "a valid bearer token is required (Authorization: Bearer …)");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    };
    let reads = request.method() == Method::GET || request.method() == Method::HEAD;
    if !reads && role != ApiRole::Operator {
        return error(StatusCode::FORBIDDEN, &format!("token {name:?} is read-only; this needs an operator token"));
    }
    if reads {
        tracing::debug!(token = name, method = %request.method(), path = request.uri().path(), "api request");
    } else {
        tracing::info!(token = name, method = %request.method(), path = request.uri().path(), "api write");
    }
    next.run(request).await
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// A [`Failure`] as an HTTP answer.
struct ApiError(Failure);

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        Self(f)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Failure::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Failure::NotFound(_) => StatusCode::NOT_FOUND,
            Failure::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Failed(_) => StatusCode::CONFLICT,
            Failure::Reported => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = crate::secret::redact_url_str(&self.0.to_string());
        error(status, &message)
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    match state.runtime.store.list(1).await {
        Ok(_) => (StatusCode::OK, Json(serde_json::json!({ "ready": true }))).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "Redis is not reachable"),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    workflow: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_runs(State(state): State<Arc<ApiState>>, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    // Filters apply to the newest runs; ask for more so a filter still fills the page.
    let fetch = if q.workflow.is_some() || q.state.is_some() { limit * 10 } else { limit };
    let runs = state.runtime.store.list(fetch).await.map_err(runs::store_failure)?;
    let runs: Vec<_> = runs
        .into_iter()
        .filter(|r| q.workflow.as_ref().is_none_or(|w| &r.workflow == w))
        .filter(|r| q.state.as_ref().is_none_or(|s| r.state.as_str() == s))
        .take(limit)
        .collect();
    Ok(Json(runs).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enqueue {
    workflow: String,
    /// Only these tenants (`tenantry run --tenant`).
    #[serde(default)]
    tenants: Vec<String>,
    /// Only the tenants whose migrations this run changed (`--changed-by`).
    #[serde(default)]
    changed_by: Option<String>,
}

#[derive(Serialize)]
struct Started {
    id: String,
    notes: Vec<String>,
}

async fn enqueue(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<Enqueue>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let Json(e) = body.map_err(|r| {
        let message = format!("the body must be JSON like {{\"workflow\": \"nightly\"}}: {}", r.body_text());
        Failure::Invalid(vec![crate::diagnostic::Diagnostic::new(std::path::Path::new("request body"), message)])
    })?;
    let (found, _) = crate::workflow::read_all(&state.ctx.config.workflows_dir());
    if !found.iter().any(|w| w.name == e.workflow) {
        return Err(Failure::NotFound(format!("no workflow named {:?} (see GET /api/v1/workflows)", e.workflow)).into());
    }
    let trigger = crate::runtime::model::Trigger::Api;
    let started =
        runs::start(&state.ctx, &state.runtime, &e.workflow, &e.tenants, e.changed_by.as_deref(), &trigger).await?;
    Ok((StatusCode::CREATED, Json(Started { id: started.id, notes: started.notes })).into_response())
}

async fn run_detail(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(Json(runs::load_status(&state.runtime, &id).await?).into_response())
}

async fn run_report(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult<Response> {
    let store = &state.runtime.store;
    let record = store.record(&id).await.map_err(runs::store_failure)?;
    let spec = store.spec(&id).await.map_err(runs::store_failure)?;
    let tenants = store.checkpoints(&id).await.map_err(runs::store_failure)?;
    Ok(Json(crate::runtime::run_report::build(&spec, &record, &tenants)).into_response())
}

async fn control(
    State(state): State<Arc<ApiState>>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Response> {
    if !matches!(action.as_str(), "approve" | "pause" | "resume" | "cancel") {
        return Err(
            Failure::NotFound(format!("no action {action:?} on runs (approve, pause, resume, cancel, retry)")).into()
        );
    }
    Ok(Json(runs::apply(&state.runtime, &id, &action).await?).into_response())
}

async fn retry(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult<Response> {
    let new = runs::start_retry(&state.runtime, &id).await?;
    Ok((StatusCode::CREATED, Json(Started { id: new, notes: Vec::new() })).into_response())
}

#[derive(Serialize)]
struct WorkflowEntry {
    name: String,
    description: Option<String>,
    schedule: Option<String>,
    timezone: Option<String>,
    /// The next scheduled tick (UTC), for a workflow with a schedule.
    next_tick: Option<chrono::DateTime<chrono::Utc>>,
    steps: Vec<String>,
}

async fn workflows(State(state): State<Arc<ApiState>>) -> ApiResult<Response> {
    let (found, problems) = crate::workflow::read_all(&state.ctx.config.workflows_dir());
    if !problems.is_empty() && found.is_empty() {
        return Err(Failure::Invalid(problems).into());
    }
    let now = chrono::Utc::now();
    let list: Vec<WorkflowEntry> = found
        .iter()
        .map(|w| WorkflowEntry {
            name: w.name.clone(),
            description: w.spec.description.clone(),
            schedule: w.spec.schedule.clone(),
            timezone: w.spec.timezone.clone(),
            next_tick: w.schedule.as_ref().and_then(|s| s.next_after(now)),
            steps: w.spec.steps.iter().map(|s| s.label()).collect(),
        })
        .collect();
    Ok(Json(list).into_response())
}

#[derive(Serialize)]
struct TenantEntry<'a> {
    id: &'a str,
    name: &'a str,
    status: &'a str,
    labels: &'a std::collections::BTreeMap<String, String>,
    services: Vec<&'a str>,
}

async fn tenants(State(state): State<Arc<ApiState>>) -> ApiResult<Response> {
    let (catalog, _) = state.ctx.catalog().await?;
    let list: Vec<TenantEntry> = catalog
        .tenants
        .iter()
        .map(|t| TenantEntry {
            id: t.id.as_str(),
            name: &t.name,
            status: t.status.as_str(),
            labels: &t.labels,
            services: t.placements.keys().map(String::as_str).collect(),
        })
        .collect();
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
struct BackupsQuery {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    stale: bool,
}

async fn backups(State(state): State<Arc<ApiState>>, Query(q): Query<BackupsQuery>) -> ApiResult<Response> {
    let report = crate::cli::backups::report(&state.ctx, q.tenant.as_deref(), q.service.as_deref(), q.stale).await?;
    Ok(Json(report).into_response())
}
