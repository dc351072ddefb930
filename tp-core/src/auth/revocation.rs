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

/// One revoked subject: `s:<session id>`, `k:<api key id>`, or
/// `v:<user id>:<version>` (the user's access tokens of older versions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Queryable, Insertable)]
#[diesel(table_name = revocations)]
pub struct Revocation {
    /// `s:<session id>`, `k:<api key id>` or `v:<user id>:<version>`.
    pub subject: String,
    /// When it was revoked (Unix ms).
    pub revoked_at: i64,
    /// When it stops mattering (Unix ms).
    pub expires_at: i64,
}

/// The in-memory revoked set and its feeds.
pub struct Revocations {
    set: RwLock<HashMap<String, i64>>,
    /// User id → (least token version still valid, when that stops mattering).
    versions: RwLock<HashMap<String, (i64, i64)>>,
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

/// The subject that makes a user's access tokens below `version` stale.
pub fn version_subject(user_id: &str, version: i64) -> String {
    format!("v:{user_id}:{version}")
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
            versions: RwLock::new(HashMap::new()),
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

    /// The least token version of `user_id` still accepted (0 when none
    /// was revoked). A read lock and a hash lookup.
    pub fn least_token_version(&self, user_id: &str) -> i64 {
        self.versions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user_id)
            .filter(|(_, expires)| *expires > now_ms())
            .map_or(0, |(version, _)| *version)
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|e| e.into_inner()).len()
            + self
                .versions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .len()
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
        let mut versions = self.versions.write().unwrap_or_else(|e| e.into_inner());
        for r in entries {
            self.watermark.fetch_max(r.revoked_at, Ordering::AcqRel);
            if r.expires_at <= now {
                continue;
            }
            let version = r
                .subject
                .strip_prefix("v:")
                .and_then(|rest| rest.rsplit_once(':'))
                .and_then(|(user, v)| Some((user, v.parse::<i64>().ok()?)));
            if let Some((user, version)) = version {
                let slot = versions
                    .entry(user.to_owned())
                    .or_insert((version, r.expires_at));
                *slot = (slot.0.max(version), slot.1.max(r.expires_at));
            } else {
                let slot = set.entry(r.subject).or_insert(r.expires_at);
                *slot = (*slot).max(r.expires_at);
            }
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
        self.versions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, expires)| *expires > now);
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
