//! SQLite connections (WAL, busy timeout, foreign keys) and the one-replica file lock.

use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::Connection;
use diesel_async::SimpleAsyncConnection;

use super::SqliteConn;
use super::pool::Connector;
use crate::error::{Error, Result};

/// Opens SQLite connections on one database file.
pub(crate) struct SqliteConnector {
    pub(crate) path: PathBuf,
    pragmas: String,
}

impl SqliteConnector {
    pub(crate) fn new(path: &Path, busy_timeout: Duration) -> Self {
        Self {
            path: path.to_owned(),
            pragmas: format!(
                "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; \
                 PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                busy_timeout.as_millis()
            ),
        }
    }

    /// A blocking connection, for migrations.
    pub(crate) fn open_sync(&self) -> Result<diesel::SqliteConnection> {
        let mut conn = diesel::SqliteConnection::establish(&self.path.to_string_lossy())
            .map_err(|e| Error::internal(format!("sqlite open {}: {e}", self.path.display())))?;
        diesel::connection::SimpleConnection::batch_execute(&mut conn, &self.pragmas)
            .map_err(|e| Error::internal(format!("sqlite pragmas: {e}")))?;
        Ok(conn)
    }
}

impl Connector for SqliteConnector {
    type Conn = SqliteConn;

    async fn connect(&self) -> Result<SqliteConn, String> {
        let path = self.path.to_string_lossy().into_owned();
        let mut conn = <SqliteConn as diesel_async::AsyncConnection>::establish(&path)
            .await
            .map_err(|e| e.to_string())?;
        conn.batch_execute(&self.pragmas)
            .await
            .map_err(|e| e.to_string())?;
        Ok(conn)
    }
}

/// Takes an exclusive lock next to the database file, held while the process lives.
///
/// SQLite serves one replica: a second process on the same file is refused
/// at start instead of corrupting state it caches in memory.
pub(crate) fn lock_database_file(path: &Path) -> Result<File> {
    ensure_parent(path)?;
    let lock_path = path.with_extension("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(Error::conflict(
            "database_locked",
            format!(
                "another tenant-plane process is using {}; SQLite serves one replica, use PostgreSQL for more",
                path.display()
            ),
        )),
        Err(TryLockError::Error(e)) => Err(Error::internal(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// Creates the directory that will hold the database file.
pub(crate) fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| {
            Error::internal(format!("cannot create directory {}: {e}", dir.display()))
        })?;
    }
    Ok(())
}
