//! The RDS-API emulator (moto, started by `deploy/local/test.sh`) seen through a client of the tests' own, and a small HTTP proxy in front of it that can hold snapshots and instances in `creating`.
//!
//! moto (5.x) makes every DB snapshot and every restored instance `available` at once and
//! has no state transitions for RDS, so a wait would never be exercised. The proxy passes
//! every request to moto unchanged and, while told to, rewrites `available` to `creating`
//! in the answers to `DescribeDBSnapshots` or `DescribeDBInstances`, so tenantry's wait
//! really polls, and a worker can be killed in the middle of it. It also counts the
//! actions it passed (`CreateDBSnapshot`, `RestoreDBInstanceFromDBSnapshot`, ...), so a
//! test can tell that a second attempt made nothing new.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `TENANTRY_TEST_RDS_ENDPOINT`, or a panic that names the command that starts moto.
pub fn rds_endpoint() -> String {
    std::env::var("TENANTRY_TEST_RDS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "TENANTRY_TEST_RDS_ENDPOINT is not set: run the tests through `bash deploy/local/test.sh` \
             (or `source deploy/local/services.sh && ensure_moto && export_test_env`)"
        )
    })
}

/// The `[rds]` section of a config that calls `endpoint` with keys moto accepts.
pub fn rds_config(endpoint: &str, secret: &str) -> String {
    format!(
        "[rds]\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"tenantry-test\"\nsecret_access_key = \"{secret}\"\n"
    )
}

/// A client of moto itself (not through the proxy).
pub fn rds() -> aws_sdk_rds::Client {
    let creds = aws_sdk_rds::config::Credentials::new("test", "test", None, None, "test");
    let config = aws_sdk_rds::config::Builder::new()
        .behavior_version(aws_sdk_rds::config::BehaviorVersion::latest())
        .region(aws_sdk_rds::config::Region::new("us-east-1"))
        .endpoint_url(rds_endpoint())
        .credentials_provider(creds)
        .build();
    aws_sdk_rds::Client::from_conf(config)
}

/// Creates a PostgreSQL instance in moto, or panics naming the command that starts it.
pub async fn create_instance(client: &aws_sdk_rds::Client, id: &str) {
    client
        .create_db_instance()
        .db_instance_identifier(id)
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .allocated_storage(20)
        .master_username("postgres")
        .master_user_password("not-a-real-password")
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "creating the RDS instance {id} in moto at {} failed: {}. Start moto with `bash deploy/local/test.sh`.",
                rds_endpoint(),
                aws_sdk_rds::error::DisplayErrorContext(&e)
            )
        });
}

/// The manual snapshots of `instance`, by id.
pub async fn snapshots(client: &aws_sdk_rds::Client, instance: &str) -> Vec<aws_sdk_rds::types::DbSnapshot> {
    let out = client
        .describe_db_snapshots()
        .db_instance_identifier(instance)
        .snapshot_type("manual")
        .send()
        .await
        .expect("listing snapshots");
    let mut all = out.db_snapshots().to_vec();
    all.sort_by(|a, b| a.db_snapshot_identifier().cmp(&b.db_snapshot_identifier()));
    all
}

pub async fn snapshot_ids(client: &aws_sdk_rds::Client, instance: &str) -> Vec<String> {
    snapshots(client, instance).await.iter().filter_map(|s| s.db_snapshot_identifier().map(str::to_string)).collect()
}

/// Every instance whose `tenantry:tenant` tag is `tenant` (temporary instances).
pub async fn tenant_instances(client: &aws_sdk_rds::Client, tenant: &str) -> Vec<String> {
    let out = client.describe_db_instances().send().await.expect("listing instances");
    out.db_instances()
        .iter()
        .filter(|i| i.tag_list().iter().any(|t| t.key() == Some("tenantry:tenant") && t.value() == Some(tenant)))
        .filter_map(|i| i.db_instance_identifier().map(str::to_string))
        .collect()
}

/// Deletes the instances and their manual snapshots (tests leave nothing in moto).
pub async fn remove(client: &aws_sdk_rds::Client, instances: &[String]) {
    for id in instances {
        for s in snapshot_ids(client, id).await {
            let _ = client.delete_db_snapshot().db_snapshot_identifier(s).send().await;
        }
        let _ = client.delete_db_instance().db_instance_identifier(id).skip_final_snapshot(true).send().await;
    }
}

#[derive(Default)]
struct State {
    hold_snapshots: AtomicBool,
    hold_instances: AtomicBool,
    /// Answers rewritten to `creating` so far.
    held: AtomicU32,
    /// Describe calls still to answer with a 503, as a broken API would.
    fail: AtomicU32,
    actions: Mutex<BTreeMap<String, u32>>,
}

/// A proxy in front of moto on a port of its own (see the module's documentation). Runs on
/// a thread of its own, so tests may block.
pub struct RdsProxy {
    port: u16,
    state: Arc<State>,
}

impl RdsProxy {
    pub fn start() -> RdsProxy {
        let upstream = rds_endpoint().trim_start_matches("http://").trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (state, upstream) = (shared.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, &state);
                });
            }
        });
        RdsProxy { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// While set, every snapshot in a `DescribeDBSnapshots` answer is `creating`.
    pub fn hold_snapshots(&self, on: bool) {
        self.state.hold_snapshots.store(on, Ordering::SeqCst);
    }

    /// While set, every instance in a `DescribeDBInstances` answer is `creating`.
    pub fn hold_instances(&self, on: bool) {
        self.state.hold_instances.store(on, Ordering::SeqCst);
    }

    /// Answers rewritten to `creating` so far: the polls that saw something not ready.
    pub fn held(&self) -> u32 {
        self.state.held.load(Ordering::SeqCst)
    }

    /// The next `n` describe calls fail with a 503 (the SDK retries 3 times by itself).
    pub fn fail_describes(&self, n: u32) {
        self.state.fail.store(n, Ordering::SeqCst);
    }

    /// How many requests of `action` passed.
    pub fn count(&self, action: &str) -> u32 {
        self.state.actions.lock().unwrap().get(action).copied().unwrap_or(0)
    }

    /// Waits until `f` holds, or panics with `what` after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, f: impl Fn(&RdsProxy) -> bool) {
        let deadline = std::time::Instant::now() + timeout;
        while !f(self) {
            assert!(std::time::Instant::now() < deadline, "proxy: {what} did not happen within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One request: read it, pass it to moto (which closes after answering), rewrite the
/// answer when told to, send it back and close.
fn serve(mut client: TcpStream, upstream: &str, state: &State) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let (head, body) = read_message(&mut client)?;
    let action = form_value(&body, "Action").unwrap_or_default();
    *state.actions.lock().unwrap().entry(action.clone()).or_default() += 1;
    let describe = action == "DescribeDBSnapshots" || action == "DescribeDBInstances";
    if describe && state.fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        let xml = "<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code><Message>proxy: injected failure</Message></Error></ErrorResponse>";
        write!(
            client,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    let split = find(&answer, b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
    let (head, body) = answer.split_at(split);
    let mut text = String::from_utf8_lossy(body).into_owned();
    let rewrites: &[(&str, &str)] = match action.as_str() {
        "DescribeDBSnapshots" if state.hold_snapshots.load(Ordering::SeqCst) => {
            &[("<Status>available</Status>", "<Status>creating</Status>")]
        }
        "DescribeDBInstances" if state.hold_instances.load(Ordering::SeqCst) => {
            &[("<DBInstanceStatus>available</DBInstanceStatus>", "<DBInstanceStatus>creating</DBInstanceStatus>")]
        }
        _ => &[],
    };
    let mut rewritten = false;
    for (from, to) in rewrites {
        if text.contains(from) {
            text = text.replace(from, to);
            rewritten = true;
        }
    }
    if rewritten {
        state.held.fetch_add(1, Ordering::SeqCst);
    }
    let head: String = String::from_utf8_lossy(head)
        .lines()
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("content-length:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    write!(client, "{head}Content-Length: {}\r\n\r\n{text}", text.len())?;
    client.flush()
}

/// A request's head (with its blank line) and its body (by Content-Length).
fn read_message(conn: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    // moto answers and closes; say so, so that it does not wait for a next request.
    let head = head
        .lines()
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        + "Connection: close\r\n\r\n";
    Ok((head.into_bytes(), body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A value of an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8], key: &str) -> Option<String> {
    String::from_utf8_lossy(body).split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}
