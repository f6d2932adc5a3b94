//! The HTTP API of `tenantry serve`: every route documented in `docs/openapi.json` and no other, tokens required (401), read-only tokens refused on writes (403), enqueue → the run completes → its detail and report show it, a gated run paused, resumed and approved through the API, and no configured secret in any response or in the server's log.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use support::fleet::TwoServices;
use support::store::{s3_env, s3_storage_config};
use support::{WorkerProcess, repo};

const OPERATOR: &str = "op-token-0123456789abcdef-secret";
const READER: &str = "read-token-0123456789abcdef-secret";
/// The database password in the host's URL (the test server trusts local connections, so
/// any password works; it must never be shown).
const DB_PASSWORD: &str = "db-pass-0123456789-secret";

/// A raw request; the status and the whole response.
async fn http_raw(port: u16, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the API");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    (text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), text)
}

/// One HTTP/1.1 exchange (the tests' own minimal client): status and body.
async fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the API");
    let body = body.unwrap_or("");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // Bodies of axum's JSON answers come with a length; decode chunked ones just in case.
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fleet whose config serves the API on a free port with an operator and a read token
/// (from files), its host URL carrying a password; `serve` started with its log in `log`.
async fn setup(prefix: &str, workflow: &str) -> (TwoServices, u16, WorkerProcess) {
    let fleet = TwoServices::new(prefix, &["acme", "globex"], ("check", workflow), async |_, _| {}).await;
    let port = free_port();
    std::fs::write(fleet.path().join("operator.token"), format!("{OPERATOR}\n")).unwrap();
    std::fs::write(fleet.path().join("read.token"), READER).unwrap();
    let storage = s3_storage_config(&fleet.name);
    fleet.edit_config(|c| {
        let c = c.replace("postgres://postgres@", &format!("postgres://postgres:{DB_PASSWORD}@"));
        format!(
            "{c}\n{storage}\n[api]\naddress = \"127.0.0.1:{port}\"\n\n[[api.tokens]]\nname = \"ops\"\nrole = \"operator\"\nfile = \"operator.token\"\n\n\
             [[api.tokens]]\nname = \"dashboard\"\nrole = \"read\"\nfile = \"read.token\"\n"
        )
    });
    let server = WorkerProcess::spawn_logged(fleet.path(), "serve", "debug", &fleet.path().join("serve.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_ready(port).await.is_none() {
        assert!(Instant::now() < deadline, "the API did not come up: {}", log(fleet.path()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (fleet, port, server)
}

async fn http_ready(port: u16) -> Option<()> {
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Polls a run's detail until `done` holds of it (a minute at most).
async fn wait_run(port: u16, id: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http(port, "GET", &format!("/api/v1/runs/{id}"), Some(READER), None).await;
        assert_eq!(status, 200, "{body}");
        let detail = json(&body);
        if done(&detail) {
            return detail;
        }
        assert!(Instant::now() < deadline, "timed out: {detail:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_route_answers_with_tokens_checked_and_a_run_goes_through() {
    let (fleet, port, _server) = setup("tapi", "[[steps]]\nkind = \"health\"\n").await;
    let mut bodies = Vec::new();

    // The routes the server has are the ones docs/openapi.json describes.
    let doc = json(&std::fs::read_to_string(repo().join("docs/openapi.json")).unwrap());
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| ops.as_object().unwrap().keys().map(move |m| (m.to_uppercase(), path.clone())))
        .collect();
    let routes: BTreeSet<(String, String)> =
        tenantry::api::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, routes, "docs/openapi.json and api::ROUTES disagree");

    // Probes without a token; everything else refuses a missing or unknown token.
    assert_eq!(http(port, "GET", "/healthz", None, None).await.0, 200);
    assert_eq!(http(port, "GET", "/readyz", None, None).await.0, 200);
    for (method, path) in &routes {
        if path == "/healthz" || path == "/readyz" {
            continue;
        }
        let path = path.replace("{id}", "no-such-run");
        let (status, body) = http(port, method, &path, None, Some("{}")).await;
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
        let (status, _) = http(port, method, &path, Some("not-a-token-not-a-token"), Some("{}")).await;
        assert_eq!(status, 401, "{method} {path} with an unknown token");
        if method == "POST" {
            let (status, body) = http(port, method, &path, Some(READER), Some("{}")).await;
            assert_eq!(status, 403, "{method} {path} with the read token: {body}");
            assert!(body.contains("read-only"), "{body}");
        }
        bodies.push(body);
    }

    // HEAD is a read; the scheme is case-insensitive.
    assert_eq!(http(port, "HEAD", "/api/v1/runs", Some(READER), None).await.0, 200);
    let (status, _) = http_raw(
        port,
        &format!("GET /api/v1/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: bearer {READER}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);

    // Enqueue, watch it finish, read it back.
    let (status, body) = http(port, "POST", "/api/v1/runs", Some(OPERATOR), Some(r#"{"workflow": "check"}"#)).await;
    assert_eq!(status, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let detail = wait_run(port, &id, |d| d["run"]["state"] == "succeeded").await;
    assert_eq!(detail["tenants"].as_object().unwrap().len(), 2, "{detail:#}");
    assert_eq!(detail["run"]["trigger"], "api", "{detail:#}");
    assert!(detail["tenants"]["acme"]["outputs"]["health/core"].is_object(), "{detail:#}");
    bodies.push(detail.to_string());
    for (path, check) in [
        ("/api/v1/runs?workflow=check&limit=5".to_string(), "runs"),
        (format!("/api/v1/runs/{id}/report"), "report"),
        ("/api/v1/workflows".to_string(), "workflows"),
        ("/api/v1/tenants".to_string(), "tenants"),
        ("/api/v1/backups?tenant=acme".to_string(), "backups"),
    ] {
        let (status, body) = http(port, "GET", &path, Some(READER), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        let v = json(&body);
        match check {
            "runs" => assert_eq!(v[0]["id"], id.as_str(), "{v:#}"),
            "report" => assert_eq!(v["outcomes"]["succeeded"], 2, "{v:#}"),
            "workflows" => assert_eq!(v[0]["name"], "check", "{v:#}"),
            "backups" => assert_eq!(v["tenants"].as_array().unwrap().len(), 2, "acme's core and clinic: {v:#}"),
            _ => assert_eq!(v.as_array().unwrap().len(), 2, "{v:#}"),
        }
        bodies.push(body);
    }

    // The errors say what is wrong, with the status for it.
    for (method, path, body, expected) in [
        ("POST", "/api/v1/runs".to_string(), r#"{"workflow": "nope"}"#, 404),
        ("POST", "/api/v1/runs".to_string(), r#"{"workflow": "#, 422),
        ("POST", "/api/v1/runs".to_string(), r#"{"workflow": "check", "bogus": 1}"#, 422),
        ("GET", "/api/v1/runs/no-such-run".to_string(), "", 404),
        ("GET", "/api/v1/backups?tenant=nobody".to_string(), "", 404),
        ("POST", format!("/api/v1/runs/{id}/approve"), "", 409),
        ("POST", format!("/api/v1/runs/{id}/retry"), "", 409),
        ("POST", format!("/api/v1/runs/{id}/frobnicate"), "", 404),
        ("GET", "/api/v1/nothing".to_string(), "", 404),
        ("GET", "/nothing/at/all".to_string(), "", 404),
    ] {
        let (status, answer) = http(port, method, &path, Some(OPERATOR), Some(body)).await;
        assert_eq!(status, expected, "{method} {path} {body}: {answer}");
        assert!(json(&answer)["error"].is_string(), "{method} {path}: {answer}");
        bodies.push(answer);
    }

    // No secret anywhere: not the tokens, not the database password.
    let log = log(fleet.path());
    for text in bodies.iter().chain([&log]) {
        for secret in [OPERATOR, READER, DB_PASSWORD, &s3_env("TENANTRY_TEST_S3_SECRET_KEY")] {
            assert!(!text.contains(secret), "a secret leaked: {text}");
        }
    }
    fleet.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gated_run_is_paused_resumed_and_approved_through_the_api() {
    let (fleet, port, _server) = setup(
        "tapigate",
        "[[waves]]\nname = \"canary\"\ntenants = [\"acme\"]\n\n[[waves]]\nname = \"rest\"\napproval = true\n\n\
         [[steps]]\nkind = \"health\"\n",
    )
    .await;
    let (status, body) = http(port, "POST", "/api/v1/runs", Some(OPERATOR), Some(r#"{"workflow": "check"}"#)).await;
    assert_eq!(status, 201, "{body}");
    let id = json(&body)["id"].as_str().unwrap().to_string();
    let waiting = wait_run(port, &id, |d| d["run"]["state"] == "awaiting_approval").await;
    assert_eq!(waiting["tenants"]["globex"]["state"], "pending", "{waiting:#}");

    let (status, _) = http(port, "POST", &format!("/api/v1/runs/{id}/approve"), Some(READER), None).await;
    assert_eq!(status, 403, "a read token cannot approve");
    let (status, body) = http(port, "POST", &format!("/api/v1/runs/{id}/pause"), Some(OPERATOR), None).await;
    assert_eq!((status, json(&body)["state"].clone()), (200, "paused".into()), "{body}");
    let (status, body) = http(port, "POST", &format!("/api/v1/runs/{id}/approve"), Some(OPERATOR), None).await;
    assert_eq!(status, 409, "a paused run is not approved: {body}");
    let (status, body) = http(port, "POST", &format!("/api/v1/runs/{id}/resume"), Some(OPERATOR), None).await;
    assert_eq!(status, 200, "{body}");
    // Resumed, the gate still holds.
    let waiting = wait_run(port, &id, |d| d["run"]["state"] == "awaiting_approval").await;
    assert_eq!(waiting["tenants"]["globex"]["state"], "pending", "{waiting:#}");
    let (status, body) = http(port, "POST", &format!("/api/v1/runs/{id}/approve"), Some(OPERATOR), None).await;
    assert_eq!(status, 200, "{body}");
    let done = wait_run(port, &id, |d| d["run"]["state"] == "succeeded").await;
    assert_eq!(done["tenants"]["globex"]["state"], "succeeded", "{done:#}");
    fleet.drop().await;
}

/// A client that sends half a request and waits is disconnected once the request head is
/// overdue, and others are served meanwhile: a slow client cannot hold the server.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (fleet, port, _server) = setup("tapislow", "[[steps]]\nkind = \"health\"\n").await;
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    slow.write_all(b"GET /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let started = Instant::now();
    assert_eq!(http(port, "GET", "/healthz", None, None).await.0, 200, "served while a client dawdles");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slow client was never disconnected");
    let after = started.elapsed();
    let limit = tenantry::api::HEADER_READ_TIMEOUT;
    assert!(after + Duration::from_secs(1) >= limit && after < limit + Duration::from_secs(10), "{after:?}");
    let answer = String::from_utf8_lossy(&rest);
    assert!(!answer.contains("200 OK"), "a request without its end was answered: {answer}");
    fleet.drop().await;
}
