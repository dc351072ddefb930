//! The pgvector `vector` type for diesel, in pgvector's binary wire format.
//!
//! Written here rather than taken from the `pgvector` crate's diesel feature,
//! which turns on `diesel/postgres` and so links libpq at build time; the
//! plane talks to PostgreSQL through tokio-postgres and needs no C library.

use std::io::Write;

use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};

/// SQL type of pgvector's `vector`.
///
/// Its binds declare no type (OID 0), and PostgreSQL infers `vector` from
/// the column written or the `$n::vector` cast. pgvector's OID differs from
/// database to database, and a type looked up by name makes diesel-async
/// serialize every bind twice to patch the OID into it.
#[derive(
    Debug, Clone, Copy, Default, diesel::sql_types::SqlType, diesel::query_builder::QueryId,
)]
#[diesel(postgres_type(oid = 0, array_oid = 0))]
pub struct Vector;

/// A vector read from a `vector` column.
#[derive(Debug, Clone, PartialEq, diesel::deserialize::FromSqlRow)]
#[diesel(sql_type = Vector)]
pub struct PgVector(pub Vec<f32>);

/// A vector bound to a `vector` parameter, in pgvector's binary format,
/// which PostgreSQL reads without parsing or converting anything.
#[derive(Debug, Clone, Copy, diesel::expression::AsExpression)]
#[diesel(sql_type = Vector)]
pub struct VectorBind<'a>(pub &'a [f32]);

impl ToSql<Vector, Pg> for VectorBind<'_> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let dim =
            u16::try_from(self.0.len()).map_err(|_| "vector has more than 65535 dimensions")?;
        let mut buf = Vec::with_capacity(4 + self.0.len() * 4);
        buf.extend_from_slice(&dim.to_be_bytes());
        buf.extend_from_slice(&0u16.to_be_bytes());
        for v in self.0 {
            buf.extend_from_slice(&v.to_be_bytes());
        }
        out.write_all(&buf)?;
        Ok(IsNull::No)
    }
}

impl FromSql<Vector, Pg> for PgVector {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let bytes = value.as_bytes();
        if bytes.len() < 4 {
            return Err("vector value too short".into());
        }
        let dim = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
        let body = &bytes[4..];
        if body.len() != dim * 4 {
            return Err("vector length does not match its dimension".into());
        }
        Ok(PgVector(
            body.chunks_exact(4)
                .map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }
}
