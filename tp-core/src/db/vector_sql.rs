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
#[derive(
    Debug, Clone, Copy, Default, diesel::sql_types::SqlType, diesel::query_builder::QueryId,
)]
#[diesel(postgres_type(name = "vector"))]
pub struct Vector;

/// A vector value bound to or read from a `vector` column.
#[derive(
    Debug, Clone, PartialEq, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = Vector)]
pub struct PgVector(pub Vec<f32>);

impl ToSql<Vector, Pg> for PgVector {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let dim =
            u16::try_from(self.0.len()).map_err(|_| "vector has more than 65535 dimensions")?;
        out.write_all(&dim.to_be_bytes())?;
        out.write_all(&0u16.to_be_bytes())?;
        for v in &self.0 {
            out.write_all(&v.to_be_bytes())?;
        }
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

/// A query vector bound as PostgreSQL's built-in `real[]` (cast to `vector`
/// in SQL), in one write of the binary array format. Diesel's generic array
/// encoding writes element by element, and a bind of pgvector's own type
/// makes the driver encode every bind twice to find its OID.
#[derive(Debug, Clone, Copy, diesel::expression::AsExpression)]
#[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Float4>)]
pub struct PgFloat4Array<'a>(pub &'a [f32]);

/// OID of `real` (float4).
const FLOAT4_OID: i32 = 700;

impl ToSql<diesel::sql_types::Array<diesel::sql_types::Float4>, Pg> for PgFloat4Array<'_> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let len = i32::try_from(self.0.len()).map_err(|_| "array too long")?;
        let mut buf = Vec::with_capacity(20 + self.0.len() * 8);
        // One dimension, no NULLs, element type, then its length and lower bound.
        for word in [1, 0, FLOAT4_OID, len, 1] {
            buf.extend_from_slice(&word.to_be_bytes());
        }
        for v in self.0 {
            buf.extend_from_slice(&4i32.to_be_bytes());
            buf.extend_from_slice(&v.to_be_bytes());
        }
        out.write_all(&buf)?;
        Ok(IsNull::No)
    }
}
