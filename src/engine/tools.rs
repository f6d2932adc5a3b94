//! Running the engines' command-line tools (`pg_dump`, `pg_restore`, `psql`) against a configured host: the connection goes through libpq's environment, so no password is ever on a command line.

use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::secret::SecretUrl;

/// libpq environment variables that reach `database` on the server of `url`. The password,
/// if any, is only in `PGPASSWORD` (a child's environment is private to it; its argv is not).
pub fn libpq_env(url: &SecretUrl, database: &str) -> Vec<(&'static str, String)> {
    let u = url.url();
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let mut env = vec![("PGDATABASE", database.to_string()), ("PGAPPNAME", "tenantry".to_string())];
    let param = |name: &str| u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    if let Some(host) = param("host").or_else(|| u.host_str().filter(|h| !h.is_empty()).map(str::to_string)) {
        env.push(("PGHOST", host.trim_start_matches('[').trim_end_matches(']').to_string()));
    }
    if let Some(port) = param("port").or_else(|| u.port().map(|p| p.to_string())) {
        env.push(("PGPORT", port));
    }
    if !u.username().is_empty() {
        env.push(("PGUSER", decode(u.username())));
    } else if let Some(user) = param("user") {
        env.push(("PGUSER", user));
    }
    if let Some(password) = u.password() {
        env.push(("PGPASSWORD", decode(password)));
    }
    for (param_name, var) in
        [("sslmode", "PGSSLMODE"), ("sslrootcert", "PGSSLROOTCERT"), ("sslcert", "PGSSLCERT"), ("sslkey", "PGSSLKEY")]
    {
        if let Some(v) = param(param_name) {
            env.push((var, v));
        }
    }
    env
}

/// A command for a libpq tool connected to `database` on `url`'s server: the caller's
/// other `PG*` settings are removed, so only the configured host is reached.
pub fn libpq_command(program: &str, url: &SecretUrl, database: &str) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(k);
        }
    }
    cmd.envs(libpq_env(url, database)).stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// `program --version`, e.g. "pg_dump (PostgreSQL) 15.19", or why it could not be run.
pub async fn version(program: &str) -> Result<String, String> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e} (install the PostgreSQL client tools)"))?;
    if !out.status.success() {
        return Err(format!("`{program} --version` failed ({}): {}", out.status, tail(&out.stderr, 500)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The standard output of a tool (a child spawned with piped stdout and stderr) as a
/// stream that ends with an error, not an end of file, when the tool exits unsuccessfully:
/// a reader uploading it (see [`crate::storage::ObjectStore::upload`]) aborts instead of
/// storing a truncated object. Its stderr is kept, bounded, for the message; dropping the
/// reader kills the tool.
pub struct CheckedOutput {
    program: &'static str,
    stdout: ChildStdout,
    child: Option<Child>,
    stderr: Option<tokio::task::JoinHandle<Vec<u8>>>,
    finish: Option<Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>>,
    done: bool,
    failure: Arc<Mutex<Option<String>>>,
}

/// How much of a tool's stderr is kept (its end).
const STDERR_KEPT: usize = 4096;

impl CheckedOutput {
    pub fn new(program: &'static str, mut child: Child) -> Self {
        let stdout = child.stdout.take().expect("spawned with piped stdout");
        let stderr = child.stderr.take().map(|pipe| keep_tail(pipe, STDERR_KEPT));
        Self { program, stdout, child: Some(child), stderr, finish: None, done: false, failure: Arc::default() }
    }

    /// Why the tool failed, once the stream ended with its failure.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure slot").clone()
    }
}

impl AsyncRead for CheckedOutput {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Ok(()));
        }
        if this.finish.is_none() {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.stdout).poll_read(cx, buf))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            // The end of the output: the tool's exit status decides what it means.
            let (mut child, stderr) = (this.child.take(), this.stderr.take());
            let (program, failure) = (this.program, this.failure.clone());
            this.finish = Some(Box::pin(async move {
                let status = match child.as_mut() {
                    Some(c) => c.wait().await?,
                    None => return Ok(()),
                };
                let stderr = match stderr {
                    Some(task) => task.await.unwrap_or_default(),
                    None => Vec::new(),
                };
                if status.success() {
                    return Ok(());
                }
                let message = format!("{program} failed ({status}): {}", tail(&stderr, STDERR_KEPT));
                *failure.lock().expect("failure slot") = Some(message.clone());
                Err(std::io::Error::other(message))
            }));
        }
        let result = ready!(this.finish.as_mut().expect("set above").as_mut().poll(cx));
        this.finish = None;
        this.done = true;
        Poll::Ready(result)
    }
}

/// Reads a tool's stderr to its end on a task of its own (so the tool never blocks on a
/// full pipe) and keeps its last `limit` bytes, for an error message.
pub fn keep_tail(mut pipe: ChildStderr, limit: usize) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > limit {
                kept.drain(..kept.len() - limit);
            }
        }
        kept
    })
}

/// The last `limit` bytes of a tool's stderr, for an error message (libpq tools never
/// print a password; the connection is given to them without one on the command line).
pub fn tail(stderr: &[u8], limit: usize) -> String {
    String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(limit)..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_only_in_pgpassword() {
        let url = SecretUrl::parse("postgres://app%40x:p%23ss@db.internal:6432/postgres?sslmode=require").unwrap();
        let env = libpq_env(&url, "tenant_a");
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGHOST"), Some("db.internal"));
        assert_eq!(get("PGPORT"), Some("6432"));
        assert_eq!(get("PGUSER"), Some("app@x"));
        assert_eq!(get("PGPASSWORD"), Some("p#ss"));
        assert_eq!(get("PGDATABASE"), Some("tenant_a"));
        assert_eq!(get("PGSSLMODE"), Some("require"));
    }
}
