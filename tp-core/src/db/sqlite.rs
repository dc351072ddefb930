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
            // Per-connection settings only. The journal mode belongs to the
            // file and is set once, by the migrating connection: switching
            // it needs an exclusive lock that SQLite does not wait for, so a
            // pool connection opened while migrations write would fail with
            // "database is locked" despite the busy timeout.
            pragmas: format!(
                "PRAGMA busy_timeout = {}; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                busy_timeout.as_millis()
            ),
        }
    }

    /// A blocking connection, for migrations; it puts the file in WAL mode.
    pub(crate) fn open_sync(&self) -> Result<diesel::SqliteConnection> {
        let mut conn = diesel::SqliteConnection::establish(&self.path.to_string_lossy())
            .map_err(|e| Error::internal(format!("sqlite open {}: {e}", self.path.display())))?;
        let pragmas = format!("{} PRAGMA journal_mode = WAL;", self.pragmas);
        diesel::connection::SimpleConnection::batch_execute(&mut conn, &pragmas)
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

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;
    use diesel_async::RunQueryDsl;

    use super::*;

    #[derive(diesel::QueryableByName)]
    struct Mode {
        #[diesel(sql_type = diesel::sql_types::Text)]
        journal_mode: String,
    }

    #[tokio::test]
    async fn a_pool_connection_opens_while_another_connection_writes() {
        let dir = std::env::temp_dir().join(format!("tp-sqlite-{}", uuid::Uuid::new_v4()));
        let path = dir.join("plane.db");
        ensure_parent(&path).unwrap();
        let connector = SqliteConnector::new(&path, Duration::from_secs(2));
        // A fresh file, not yet in WAL mode, with another connection in a
        // write: how a replica's pool fills while migrations run.
        let mut writer = diesel::SqliteConnection::establish(&path.to_string_lossy()).unwrap();
        writer
            .batch_execute("CREATE TABLE t (x INTEGER); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        let mut conn = connector.connect().await.expect("connect during a write");
        writer.batch_execute("COMMIT").unwrap();

        // The migrating connection puts the file in WAL mode for everyone:
        // a connection opened before switches at its next transaction.
        let migrator = connector.open_sync().unwrap();
        diesel::sql_query("SELECT x FROM t")
            .execute(&mut conn)
            .await
            .unwrap();
        let mode: Mode = diesel::sql_query("PRAGMA journal_mode")
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(mode.journal_mode, "wal");
        drop((conn, migrator, writer));
        let _ = fs::remove_dir_all(&dir);
    }

    fn fresh_file() -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("tp-sqlite-{}", uuid::Uuid::new_v4()));
        let path = dir.join("plane.db");
        ensure_parent(&path).unwrap();
        (dir, path)
    }

    async fn insert_after_read(conn: &mut SqliteConn, x: i32) -> Result<()> {
        use crate::db::WriteTransaction;
        conn.write_transaction(async |c| {
            // Read first, then write: the shape that never got the busy
            // timeout in a deferred transaction.
            diesel::sql_query("SELECT count(*) FROM t")
                .execute(c)
                .await?;
            diesel::sql_query(format!("INSERT INTO t VALUES ({x})"))
                .execute(c)
                .await?;
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn a_write_transaction_waits_for_another_writer() {
        let (dir, path) = fresh_file();
        let connector = SqliteConnector::new(&path, Duration::from_secs(5));
        let mut setup = connector.open_sync().unwrap();
        setup.batch_execute("CREATE TABLE t (x INTEGER)").unwrap();
        let mut conn = connector.connect().await.unwrap();
        // Another connection writes and commits a moment later.
        let writer = std::thread::spawn(move || {
            setup
                .batch_execute("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            setup.batch_execute("COMMIT").unwrap();
        });
        std::thread::sleep(Duration::from_millis(50));
        insert_after_read(&mut conn, 2)
            .await
            .expect("waits for the lock instead of failing");
        writer.join().unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_lock_held_past_the_busy_timeout_is_a_retryable_busy() {
        let (dir, path) = fresh_file();
        let connector = SqliteConnector::new(&path, Duration::from_millis(100));
        let mut holder = connector.open_sync().unwrap();
        holder
            .batch_execute("CREATE TABLE t (x INTEGER); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
            .unwrap();
        let mut conn = connector.connect().await.unwrap();
        let refused = insert_after_read(&mut conn, 2).await.unwrap_err();
        assert_eq!(
            (refused.kind(), refused.code()),
            (crate::ErrorKind::Unavailable, "database_busy")
        );
        holder.batch_execute("COMMIT").unwrap();
        insert_after_read(&mut conn, 3)
            .await
            .expect("the connection is usable again");
        let _ = fs::remove_dir_all(&dir);
    }
}
