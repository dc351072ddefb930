//! The set of ended sessions and revoked API keys, held in memory on every
//! replica so the request path checks it without I/O.
//!
//! The database is the source of truth: a revocation is committed there
//! first, then published on Redis. Each replica loads the set at start,
//! applies Redis messages as they arrive (instant), and polls the database
//! (within the poll interval even when Redis is down or a message was lost).
//! Entries expire once no token they could cover is still valid.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};

use crate::db::schema::revocations;
use crate::db::{Database, with_conn};
use crate::error::Result;
use crate::redis::Redis;
use crate::time::now_ms;

/// How far back each poll looks behind the newest revocation it has seen:
/// transactions commit out of timestamp order and replica clocks differ.
const POLL_OVERLAP_MS: i64 = 10_000;

/// One revoked subject: `s:<session id>` or `k:<api key id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Queryable, Insertable)]
#[diesel(table_name = revocations)]
pub struct Revocation {
    /// `s:<session id>` or `k:<api key id>`.
    pub subject: String,
    /// When it was revoked (Unix ms).
    pub revoked_at: i64,
    /// When it stops mattering (Unix ms).
    pub expires_at: i64,
}

/// The in-memory revoked set and its feeds.
pub struct Revocations {
    set: RwLock<HashMap<String, i64>>,
    db: Arc<Database>,
    redis: Option<Arc<Redis>>,
    channel: String,
    watermark: AtomicI64,
    messages: AtomicU64,
}

/// The subject of a session.
pub fn session_subject(session_id: &str) -> String {
    format!("s:{session_id}")
}

/// The subject of an API key.
pub fn key_subject(key_id: &str) -> String {
    format!("k:{key_id}")
}

impl Revocations {
    /// An empty set; call [`load_all`](Self::load_all) and [`spawn_feeds`](Self::spawn_feeds) next.
    pub fn new(db: Arc<Database>, redis: Option<Arc<Redis>>, tenant: &str) -> Self {
        Self {
            set: RwLock::new(HashMap::new()),
            db,
            redis,
            channel: format!("tp:{tenant}:revocations"),
            watermark: AtomicI64::new(0),
            messages: AtomicU64::new(0),
        }
    }

    /// Whether `subject` is revoked. A read lock and a hash lookup.
    pub fn is_revoked(&self, subject: &str) -> bool {
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(subject)
            .is_some_and(|expires| *expires > now_ms())
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Redis messages applied since start.
    pub fn messages_received(&self) -> u64 {
        AtomicU64::load(&self.messages, Ordering::Relaxed)
    }

    fn apply(&self, entries: impl IntoIterator<Item = Revocation>) {
        let now = now_ms();
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        for r in entries {
            if r.expires_at > now {
                let slot = set.entry(r.subject).or_insert(r.expires_at);
                *slot = (*slot).max(r.expires_at);
            }
            self.watermark.fetch_max(r.revoked_at, Ordering::AcqRel);
        }
    }

    /// Applies revocations this replica just committed, then tells the others.
    pub async fn announce(&self, entries: Vec<Revocation>) {
        self.apply(entries.clone());
        let Some(redis) = &self.redis else { return };
        for entry in entries {
            let Ok(message) = serde_json::to_string(&entry) else {
                continue;
            };
            if let Err(e) = redis.publish(&self.channel, message).await {
                // Other replicas still see it at their next database poll.
                tracing::warn!(error = %e, "revocation not published; replicas will poll it");
            }
        }
    }

    /// Reads every revocation still in force.
    pub async fn load_all(&self) -> Result<()> {
        let now = now_ms();
        let rows: Vec<Revocation> = with_conn!(&self.db, |conn| {
            Ok(revocations::table
                .filter(revocations::expires_at.gt(now))
                .load::<Revocation>(conn)
                .await?)
        })?;
        let count = rows.len();
        self.apply(rows);
        tracing::info!(count, "revocations loaded");
        Ok(())
    }

    /// Reads revocations newer than the watermark (minus an overlap).
    pub async fn poll(&self) -> Result<usize> {
        let since = AtomicI64::load(&self.watermark, Ordering::Acquire) - POLL_OVERLAP_MS;
        let now = now_ms();
        let rows: Vec<Revocation> = with_conn!(&self.db, |conn| {
            Ok(revocations::table
                .filter(revocations::revoked_at.ge(since))
                .filter(revocations::expires_at.gt(now))
                .load::<Revocation>(conn)
                .await?)
        })?;
        let count = rows.len();
        self.apply(rows);
        Ok(count)
    }

    /// Drops expired entries from memory and, now and then, from the database.
    async fn purge(&self) {
        let now = now_ms();
        self.set
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, expires| *expires > now);
        if let Err(e) = self.purge_database(now).await {
            tracing::debug!(error = %e, "revocation purge skipped");
        }
    }

    async fn purge_database(&self, now: i64) -> Result<usize> {
        with_conn!(&self.db, |conn| {
            Ok(diesel::delete(
                revocations::table.filter(revocations::expires_at.lt(now - POLL_OVERLAP_MS)),
            )
            .execute(conn)
            .await?)
        })
    }

    /// Starts the poll, purge and Redis subscription tasks; they end when the set is dropped.
    pub fn spawn_feeds(self: &Arc<Self>, poll_interval: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(poll_loop(weak.clone(), poll_interval));
        if let Some(redis) = self.redis.clone() {
            tokio::spawn(subscribe_loop(weak, redis, self.channel.clone()));
        }
    }
}

async fn poll_loop(set: Weak<Revocations>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        ticker.tick().await;
        let Some(set) = set.upgrade() else { return };
        if let Err(e) = set.poll().await {
            tracing::debug!(error = %e, "revocation poll failed; will retry");
        }
        ticks += 1;
        if ticks.is_multiple_of(30) {
            set.purge().await;
        }
    }
}

async fn subscribe_loop(set: Weak<Revocations>, redis: Arc<Redis>, channel: String) {
    use fred::interfaces::EventInterface;
    let mut messages = redis.subscriber().message_rx();
    let mut reconnects = redis.on_subscriber_reconnect();
    redis.subscribe(&channel).await;
    loop {
        tokio::select! {
            message = messages.recv() => {
                let Some(set) = set.upgrade() else { return };
                match message {
                    Ok(message) if *message.channel == *channel => {
                        let parsed = message
                            .value
                            .as_string()
                            .and_then(|text| serde_json::from_str::<Revocation>(&text).ok());
                        if let Some(entry) = parsed {
                            set.messages.fetch_add(1, Ordering::Relaxed);
                            set.apply([entry]);
                        }
                    }
                    Ok(_) => {}
                    // Messages were dropped: catch up from the database.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = set.poll().await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
            reconnected = reconnects.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = reconnected {
                    return;
                }
                let Some(set) = set.upgrade() else { return };
                // Whatever was published while the subscriber was away is lost
                // on Redis; the database has it.
                tracing::info!("redis subscriber reconnected; reloading revocations");
                let _ = set.poll().await;
            }
        }
    }
}
