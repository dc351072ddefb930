//! A bb8 connection manager that fails fast when the database is down.
//!
//! bb8's `get()` hides connection errors and waits its whole timeout. This
//! manager reports every connect failure to [`ConnectSignals`], so waiting
//! callers give up with the real reason as soon as a connect attempt fails,
//! and a connection whose statement timed out is poisoned instead of being
//! handed to the next caller in an unknown state.
//!
//! A database that refuses one more connection because it is full
//! (`max_connections`, SQLSTATE 53300) is not down: the replica keeps
//! serving on the connections it has, callers wait for one of them, and
//! no new connection is tried for [`CAPACITY_HOLD`].

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use diesel_async::pooled_connection::PoolableConnection;
use tokio::sync::watch;

/// A pooled connection with a flag that keeps it out of the pool once set.
pub(crate) struct Tracked<C> {
    /// The diesel-async connection.
    pub(crate) conn: C,
    poisoned: bool,
    _open: OpenCount,
}

/// Counts a connection as open in its signals while it lives.
struct OpenCount(Arc<ConnectSignals>);

impl OpenCount {
    fn new(signals: &Arc<ConnectSignals>) -> Self {
        signals.open.fetch_add(1, Ordering::AcqRel);
        Self(signals.clone())
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long no new connection is tried after the database refused one for capacity.
pub(crate) const CAPACITY_HOLD: Duration = Duration::from_secs(1);

/// Whether a connect error is the server refusing for lack of connection
/// slots rather than being unreachable.
pub(crate) fn is_capacity_refusal(error: &str) -> bool {
    const MARKERS: &[&str] = &[
        "SQLSTATE 53300",
        "too many clients",
        "remaining connection slots are reserved",
        // PgBouncer's max_client_conn and max_db_connections.
        "no more connections allowed",
    ];
    MARKERS.iter().any(|m| error.contains(m))
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
    /// Connections open now.
    open: AtomicU32,
    /// Until when no new connection is tried, after a refusal for capacity.
    full_until: Mutex<Option<Instant>>,
    /// A capacity episode was logged and has not ended.
    full_logged: AtomicBool,
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
            open: AtomicU32::new(0),
            full_until: Mutex::new(None),
            full_logged: AtomicBool::new(false),
        }
    }

    /// Connections open now.
    pub(crate) fn open_connections(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// While the database was found full a moment ago: why no connection is tried.
    fn holding_at_capacity(&self) -> Option<String> {
        let until = *self.full_until.lock().unwrap_or_else(|e| e.into_inner());
        until.filter(|until| Instant::now() < *until).map(|_| {
            "the database refused more connections a moment ago; not trying yet".to_owned()
        })
    }

    /// The database refused a connection for capacity while others are open.
    fn at_capacity(&self, error: &str, pool_max: u32) {
        *self.full_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + CAPACITY_HOLD);
        if !self.full_logged.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error,
                open = self.open_connections(),
                pool_max,
                hold_ms = CAPACITY_HOLD.as_millis() as u64,
                "the database refused another connection (connection slots full); \
                 serving on the open ones, callers wait for them"
            );
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
        if self.full_logged.swap(false, Ordering::AcqRel) {
            tracing::info!(
                open = self.open_connections() + 1,
                "the database accepts new connections again"
            );
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
    /// `DB_POOL_MAX`, for the log.
    pub(crate) pool_max: u32,
}

/// A connect failure, already reported to the signals.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConnectError(pub(crate) String);

impl<K: Connector> bb8::ManageConnection for Manager<K> {
    type Connection = Tracked<K::Conn>;
    type Error = ConnectError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        if let Some(reason) = self.signals.holding_at_capacity() {
            return Err(ConnectError(reason));
        }
        match self.connector.connect().await {
            Ok(conn) => {
                self.signals.connected();
                Ok(Tracked {
                    conn,
                    poisoned: false,
                    _open: OpenCount::new(&self.signals),
                })
            }
            // Full, not down: callers keep waiting for the open connections.
            Err(e) if is_capacity_refusal(&e) && self.signals.open_connections() > 0 => {
                self.signals.at_capacity(&e, self.pool_max);
                Err(ConnectError(e))
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
