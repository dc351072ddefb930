//! Write transactions that wait for the database's write lock.
//!
//! A deferred SQLite transaction that reads before it writes takes a read
//! snapshot first; when another connection commits in between, upgrading
//! to a write fails at once with "database is locked", and SQLite's busy
//! timeout never applies. `BEGIN IMMEDIATE` takes the write lock up front,
//! under the busy timeout, so concurrent writers queue instead of failing.
//! PostgreSQL's row locks need nothing of the kind.

use std::future::Future;

use diesel_async::{AsyncConnection, AsyncPgConnection};

use super::SqliteConn;
use crate::error::{Error, Result};

/// An async closure whose future is nameable, so a bound can ask it to be `Send`.
pub(crate) trait TxFn<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as TxFn<T, R>>::Fut
{
    /// The future the closure returns.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> TxFn<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// A transaction that is going to write.
pub(crate) trait WriteTransaction: Sized + Send {
    /// Runs `f` in a transaction that holds the write lock from its start
    /// (SQLite) or a plain one (PostgreSQL); commits on `Ok`, rolls back on `Err`.
    fn write_transaction<'a, 'conn, R, F>(
        &'conn mut self,
        f: F,
    ) -> impl Future<Output = Result<R>> + Send + 'conn
    where
        for<'r> F: AsyncFnOnce(&'r mut Self) -> Result<R>
            + TxFn<&'r mut Self, Result<R>, Fut: Send>
            + Send
            + 'a,
        R: Send + 'a,
        'a: 'conn;
}

impl WriteTransaction for AsyncPgConnection {
    fn write_transaction<'a, 'conn, R, F>(
        &'conn mut self,
        f: F,
    ) -> impl Future<Output = Result<R>> + Send + 'conn
    where
        for<'r> F: AsyncFnOnce(&'r mut Self) -> Result<R>
            + TxFn<&'r mut Self, Result<R>, Fut: Send>
            + Send
            + 'a,
        R: Send + 'a,
        'a: 'conn,
    {
        self.transaction::<R, Error, F>(f)
    }
}

impl WriteTransaction for SqliteConn {
    fn write_transaction<'a, 'conn, R, F>(
        &'conn mut self,
        f: F,
    ) -> impl Future<Output = Result<R>> + Send + 'conn
    where
        for<'r> F: AsyncFnOnce(&'r mut Self) -> Result<R>
            + TxFn<&'r mut Self, Result<R>, Fut: Send>
            + Send
            + 'a,
        R: Send + 'a,
        'a: 'conn,
    {
        self.immediate_transaction::<R, Error, F>(f)
    }
}

/// Advisory lock key that serialises changes to users' roles ("tpusers").
const USERS_LOCK_KEY: i64 = 0x0074_7075_7365_7273;

/// Serialises transactions that change who is an admin, so two of them
/// cannot each see another admin left and both go through.
pub(crate) trait LockUsers: Send {
    /// Holds the lock until the transaction ends.
    fn lock_users(&mut self) -> impl Future<Output = Result<()>> + Send;
}

impl LockUsers for AsyncPgConnection {
    async fn lock_users(&mut self) -> Result<()> {
        use diesel_async::RunQueryDsl;
        // Transaction-scoped, so it also works behind a transaction pooler.
        diesel::sql_query(format!("SELECT pg_advisory_xact_lock({USERS_LOCK_KEY})"))
            .execute(self)
            .await?;
        Ok(())
    }
}

impl LockUsers for SqliteConn {
    async fn lock_users(&mut self) -> Result<()> {
        // A write transaction (BEGIN IMMEDIATE) already excludes every other writer.
        Ok(())
    }
}
