//! A bb8 connection manager that fails fast when the database is down.
//!
//! bb8's `get()` hides connection errors and waits its whole timeout. This
//! manager reports every connect failure to [`ConnectSignals`], so waiting
//! callers give up with the real reason as soon as a connect attempt fails,
//! and a connection whose statement timed out is poisoned instead of being
//! handed to the next caller in an unknown state.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel_async::pooled_connection::PoolableConnection;
use tokio::sync::watch;

/// A pooled connection with a flag that keeps it out of the pool once set.
pub(crate) struct Tracked<C> {
    /// The diesel-async connection.
    pub(crate) conn: C,
    poisoned: bool,
}

impl<C> Tracked<C> {
    /// Marks the connection as unusable; the pool drops it when it is returned.
    pub(crate) fn poison(&mut self) {
        self.poisoned = true;
    }
}

impl<C: PoolableConnection> Tracked<C> {
    /// False once the connection is poisoned or its socket has closed (the
    /// connection's driver task ends when the server hangs up).
    pub(crate) fn is_open(&mut self) -> bool {
        !self.poisoned && !self.conn.is_broken()
    }
}

/// Opens one connection of a backend.
pub(crate) trait Connector: Send + Sync + 'static {
    type Conn: PoolableConnection + Send + 'static;

    fn connect(&self) -> impl Future<Output = Result<Self::Conn, String>> + Send;
}

/// Shared record of connect outcomes, watched by callers waiting on the pool.
#[derive(Debug)]
pub(crate) struct ConnectSignals {
    failures: watch::Sender<u64>,
    down: AtomicBool,
    probing: AtomicBool,
    last_probe: Mutex<Option<Instant>>,
    last_error: Mutex<Option<(Instant, String)>>,
}

/// Least time between two background connect probes while the database is down.
const PROBE_SPACING: Duration = Duration::from_millis(200);

impl ConnectSignals {
    pub(crate) fn new() -> Self {
        Self {
            failures: watch::Sender::new(0),
            down: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            last_probe: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    fn failed(&self, error: &str) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error,
                "database connection failed; failing requests fast until it is back"
            );
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), error.to_owned()));
        self.failures.send_modify(|n| *n += 1);
    }

    pub(crate) fn connected(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("database connection restored");
        }
    }

    /// True after a failed connect and until the next successful one.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// The most recent connect error and how long ago it happened.
    pub(crate) fn last_error(&self) -> Option<(Duration, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(at, e)| (at.elapsed(), e.clone()))
    }

    /// A receiver that wakes on the next connect failure.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.failures.subscribe()
    }

    /// Claims the single background probe slot; true when the caller should
    /// probe (none running, and the last one started long enough ago).
    pub(crate) fn begin_probe(&self) -> bool {
        let mut last = self.last_probe.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < PROBE_SPACING)
            || self.probing.swap(true, Ordering::AcqRel)
        {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    pub(crate) fn end_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }
}

/// Runs `SELECT 1` on a connection; false poisons it.
pub(crate) async fn ping<C: PoolableConnection + Send>(conn: &mut Tracked<C>) -> bool {
    let ok = conn.conn.batch_execute("SELECT 1").await.is_ok();
    if !ok {
        conn.poison();
    }
    ok
}

/// The bb8 manager over a [`Connector`].
pub(crate) struct Manager<K> {
    pub(crate) connector: std::sync::Arc<K>,
    pub(crate) signals: std::sync::Arc<ConnectSignals>,
}

/// A connect failure, already reported to the signals.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConnectError(pub(crate) String);

impl<K: Connector> bb8::ManageConnection for Manager<K> {
    type Connection = Tracked<K::Conn>;
    type Error = ConnectError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        match self.connector.connect().await {
            Ok(conn) => {
                self.signals.connected();
                Ok(Tracked {
                    conn,
                    poisoned: false,
                })
            }
            Err(e) => {
                self.signals.failed(&e);
                Err(ConnectError(e))
            }
        }
    }

    async fn is_valid(&self, _conn: &mut Self::Connection) -> Result<(), Self::Error> {
        // Checkout tests are off: a dead connection is found by `has_broken`
        // (closed socket) or by the statement that fails on it.
        Ok(())
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        !conn.is_open()
    }
}
