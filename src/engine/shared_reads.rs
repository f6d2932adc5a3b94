//! Reads shared by the tenants of one database: statistics or catalogs of every schema read in one query, once per database for a short time, instead of once per tenant schema.
//!
//! With `schema` isolation a thousand tenants share one database; reading
//! `pg_stat_user_tables` or `pg_index` once per tenant would read the whole catalog a thousand
//! times. A [`SharedReads`] keeps the newest read of each `(host, database)` for `ttl`: the
//! tenants that start meanwhile on this worker take their schema's part of it, and tenants
//! that start at the same moment wait for one read rather than each making their own.
//! Memory: one read per database in use, dropped once stale and replaced.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

struct Entry<T> {
    started: Instant,
    value: Arc<OnceCell<Arc<T>>>,
}

/// The newest read of each database, shared for `ttl`.
pub struct SharedReads<T> {
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry<T>>>,
}

impl<T> SharedReads<T> {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The value read for `key` less than `ttl` ago, or `read`'s (one caller reads; those
    /// arriving meanwhile wait for it). A failed read is not kept: the next caller reads.
    pub async fn get<E, F, Fut>(&self, key: &str, read: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let cell = {
            let mut entries = self.entries.lock().expect("shared reads");
            entries.retain(|_, e| e.started.elapsed() < self.ttl);
            entries
                .entry(key.to_string())
                .or_insert_with(|| Entry { started: Instant::now(), value: Arc::new(OnceCell::new()) })
                .value
                .clone()
        };
        cell.get_or_try_init(|| async { read().await.map(Arc::new) }).await.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_read_per_key_until_it_is_stale_and_failures_are_not_kept() {
        let reads = SharedReads::<usize>::new(Duration::from_millis(200));
        let count = AtomicUsize::new(0);
        let read = || async { Ok::<_, String>(count.fetch_add(1, Ordering::SeqCst)) };
        let (a, b) = tokio::join!(reads.get("db", read), reads.get("db", read));
        assert_eq!((*a.unwrap(), *b.unwrap()), (0, 0), "two callers at once share one read");
        assert_eq!(*reads.get("other", read).await.unwrap(), 1);
        assert_eq!(*reads.get("db", read).await.unwrap(), 0);
        let failed = reads.get("bad", || async { Err::<usize, _>("down".to_string()) }).await;
        assert_eq!(failed.unwrap_err(), "down");
        assert_eq!(*reads.get("bad", read).await.unwrap(), 2, "a failed read is tried again");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(*reads.get("db", read).await.unwrap(), 3, "a stale read is replaced");
    }
}
