//! The optional Redis connection: short timeouts, endless reconnects, and a
//! state the health report and the rate limiter can read without I/O.
//!
//! fred's defaults wait forever for a command when a connected Redis dies;
//! here every command is bounded, tried once, and the replica carries on
//! with local state while Redis is away.

mod target;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::clients::{Client, Pool, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::{ReconnectPolicy, UnresponsiveConfig};
use fred::types::{Builder, ClientState};
use secrecy::ExposeSecret;

use crate::config::{ConfigError, RedisConfig, vars};
use crate::error::{Error, Result};
use crate::health::{ComponentHealth, HealthContributor, Status};

pub use target::{RedisTlsFiles, Topology};

/// Checks a `REDIS_URL` and its TLS files, as the configuration does at start.
pub(crate) fn check_target(
    url: &str,
    files: &RedisTlsFiles,
) -> std::result::Result<(), ConfigError> {
    target::parse(url, files).map(drop).map_err(config_error)
}

fn config_error(error: target::TargetError) -> ConfigError {
    match error {
        target::TargetError::Url(reason) => ConfigError::new(vars::REDIS_URL, reason),
        target::TargetError::Tls(var, reason) => ConfigError::new(var, reason),
    }
}

/// Commands and a subscriber on one Redis deployment.
pub struct Redis {
    pool: Pool,
    subscriber: SubscriberClient,
    timeout: Duration,
    failures: AtomicU64,
    errors: Arc<ErrorLog>,
}

impl Redis {
    /// Builds the clients and starts connecting in the background: a replica
    /// starts whether or not Redis is up.
    pub fn start(config: &RedisConfig) -> Result<Arc<Redis>> {
        let target = target::parse(config.url.expose_secret(), &config.tls_files)
            .map_err(|e| Error::internal(config_error(e).to_string()))?;
        tracing::info!(
            topology = ?target.topology,
            tls = target.tls,
            "redis configured"
        );
        let mut builder = Builder::from_config(target.fred);
        let timeout = config.command_timeout;
        builder
            .with_performance_config(|perf| {
                perf.default_command_timeout = timeout;
            })
            .with_connection_config(|conn| {
                conn.connection_timeout = Duration::from_secs(1);
                conn.internal_command_timeout = Duration::from_secs(1);
                conn.max_command_attempts = 1;
                conn.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(Duration::from_secs(2)),
                    interval: Duration::from_millis(500),
                };
            })
            // Retry forever, 100 ms doubling to at most 2 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2000, 2));
        let pool = builder
            .build_pool(2)
            .map_err(|e| Error::internal(format!("redis pool: {e}")))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| Error::internal(format!("redis subscriber: {e}")))?;
        let errors = Arc::new(ErrorLog::default());
        for client in pool
            .clients()
            .iter()
            .map(|c| c as &dyn EventSource)
            .chain([&subscriber as &dyn EventSource])
        {
            let errors = errors.clone();
            let mut rx = client.errors();
            tokio::spawn(async move {
                while let Ok((error, server)) = rx.recv().await {
                    errors.record(&error.to_string(), server.as_ref().map(ToString::to_string));
                }
            });
        }
        drop(pool.connect());
        drop(subscriber.connect());
        drop(subscriber.manage_subscriptions());
        Ok(Arc::new(Redis {
            pool,
            subscriber,
            timeout,
            failures: AtomicU64::new(0),
            errors,
        }))
    }

    /// A client for one command.
    pub fn client(&self) -> &Client {
        self.pool.next()
    }

    /// The subscriber connection (resubscribes by itself after reconnects).
    pub fn subscriber(&self) -> &SubscriberClient {
        &self.subscriber
    }

    /// The bound on one command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the command connections are up right now.
    pub fn is_connected(&self) -> bool {
        self.pool
            .clients()
            .iter()
            .any(|c| c.state() == ClientState::Connected)
    }

    /// The last connection error, if any (for `config check --probe`).
    pub fn last_error(&self) -> Option<String> {
        self.errors
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(text, _, _)| text.clone())
    }

    /// Counts a failed command (for health and metrics).
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Commands that failed since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Publishes `message` on `channel`, bounded by the command timeout.
    pub async fn publish(&self, channel: &str, message: String) -> Result<()> {
        let outcome: std::result::Result<i64, _> = self.client().publish(channel, message).await;
        outcome.map(drop).map_err(|e| {
            self.record_failure();
            Error::unavailable("redis_unavailable", format!("redis publish: {e}"), None)
        })
    }

    /// Subscribes to `channel`; resolves once subscribed (retrying while Redis is down).
    pub async fn subscribe(&self, channel: &str) {
        let mut delay = Duration::from_millis(100);
        loop {
            if self.subscriber.state() == ClientState::Connected
                && self.subscriber.subscribe(channel).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// A receiver of reconnect events of the subscriber.
    pub fn on_subscriber_reconnect(
        &self,
    ) -> tokio::sync::broadcast::Receiver<fred::types::config::Server> {
        self.subscriber.reconnect_rx()
    }
}

/// A client whose connection errors can be watched.
trait EventSource {
    fn errors(
        &self,
    ) -> tokio::sync::broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>;
}

impl<T: EventInterface> EventSource for T {
    fn errors(
        &self,
    ) -> tokio::sync::broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>
    {
        self.error_rx()
    }
}

/// Connection errors, logged when the reason changes and at most every
/// [`ERROR_LOG_SPACING`] while it stays the same: a Redis that is down or
/// refuses the handshake says why without a line per reconnect attempt.
#[derive(Default)]
struct ErrorLog {
    last: std::sync::Mutex<Option<(String, std::time::Instant, u64)>>,
}

const ERROR_LOG_SPACING: Duration = Duration::from_secs(30);

impl ErrorLog {
    fn record(&self, error: &str, server: Option<String>) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match last.as_mut() {
            Some((text, at, repeats))
                if text == error && now.duration_since(*at) < ERROR_LOG_SPACING =>
            {
                *repeats += 1;
            }
            _ => {
                let suppressed = last.as_ref().map_or(0, |(_, _, n)| *n);
                tracing::warn!(
                    error,
                    server = server.as_deref(),
                    suppressed,
                    "redis connection failed"
                );
                *last = Some((error.to_owned(), now, 0));
            }
        }
    }
}

impl HealthContributor for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> ComponentHealth {
        let connected = self.is_connected();
        ComponentHealth {
            status: if connected {
                Status::Ok
            } else {
                Status::Degraded
            },
            detail: [
                ("connected", serde_json::json!(connected)),
                ("failed_commands", serde_json::json!(self.failures())),
            ]
            .into_iter()
            .collect(),
        }
    }
}
