//! Documents and search on PostgreSQL with pgvector.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Array, Double, Jsonb, Nullable, Text};
use diesel::upsert::excluded;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use super::filter::SqlBind;
use super::model::{Collection, Document, Metric, NewDocument, Search, SearchHit};
use crate::db::vector_sql::{PgVector, Vector, VectorBind};
use crate::db::{Database, WriteTransaction, with_conn};
use crate::error::{Error, Result};
use crate::time::now_ms;

mod table {
    diesel::table! {
        use diesel::sql_types::*;
        use crate::db::vector_sql::Vector;

        documents (collection_id, id) {
            collection_id -> Text,
            id -> Text,
            embedding -> Vector,
            content -> Nullable<Text>,
            metadata -> Jsonb,
            updated_at -> BigInt,
        }
    }
}
use table::documents;

/// HNSW links per node (pgvector's default).
pub const HNSW_M: u32 = 16;
/// HNSW candidate list while building. pgvector's default is 64; on the
/// benchmark's clustered 100k × 384 set, an index built with 64 found
/// 0.953 of the true top 10 at `ef_search` 40 (0.961 at 80), one built with
/// 100 found 0.988, and searches cost no more. Building took 1.2 times as
/// long (40 s against 33 s). An index keeps the value it was built with.
pub const HNSW_EF_CONSTRUCTION: u32 = 100;

fn index_name(collection_id: &str) -> String {
    format!("documents_hnsw_{collection_id}")
}

fn opclass(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine => "vector_cosine_ops",
        Metric::L2 => "vector_l2_ops",
        Metric::InnerProduct => "vector_ip_ops",
    }
}

fn operator(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine => "<=>",
        Metric::L2 => "<->",
        Metric::InnerProduct => "<#>",
    }
}

/// The partial HNSW index of one collection. `collection_id` is a generated
/// hex UUID and `dimension` a validated integer, so inlining them is safe;
/// they must be literals for the planner to match the partial index.
pub(super) fn create_index_sql(collection_id: &str, dimension: usize, metric: Metric) -> String {
    debug_assert!(collection_id.bytes().all(|b| b.is_ascii_hexdigit()));
    format!(
        "CREATE INDEX {} ON documents USING hnsw ((embedding::vector({dimension})) {}) \
         WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) \
         WHERE collection_id = '{collection_id}'",
        index_name(collection_id),
        opclass(metric),
    )
}

pub(super) fn drop_index_sql(collection_id: &str) -> String {
    format!("DROP INDEX IF EXISTS {}", index_name(collection_id))
}

fn pg_only() -> Error {
    Error::internal("PostgreSQL document operation on the embedded backend")
}

pub(super) async fn upsert(
    db: &Database,
    collection: &Collection,
    docs: &[NewDocument],
) -> Result<usize> {
    let now = now_ms();
    let rows: Vec<_> = docs
        .iter()
        .map(|d| {
            (
                documents::collection_id.eq(collection.id.as_str()),
                documents::id.eq(d.id.as_str()),
                documents::embedding.eq(VectorBind(&d.vector)),
                documents::content.eq(d.content.as_deref()),
                documents::metadata.eq(d.metadata.as_ref().unwrap_or(&Value::Null)),
                documents::updated_at.eq(now),
            )
        })
        .collect();
    with_conn!(
        db,
        pg | conn | {
            Ok(diesel::insert_into(documents::table)
                .values(&rows)
                .on_conflict((documents::collection_id, documents::id))
                .do_update()
                .set((
                    documents::embedding.eq(excluded(documents::embedding)),
                    documents::content.eq(excluded(documents::content)),
                    documents::metadata.eq(excluded(documents::metadata)),
                    documents::updated_at.eq(excluded(documents::updated_at)),
                ))
                .execute(conn)
                .await?)
        },
        sqlite | _conn | Err(pg_only())
    )
}

pub(super) async fn get(
    db: &Database,
    collection: &Collection,
    id: &str,
    with_vector: bool,
) -> Result<Option<Document>> {
    let row: Option<(Option<String>, Value, PgVector)> = with_conn!(
        db,
        pg | conn | {
            Ok(documents::table
                .filter(documents::collection_id.eq(&collection.id))
                .filter(documents::id.eq(id))
                .select((
                    documents::content,
                    documents::metadata,
                    documents::embedding,
                ))
                .first(conn)
                .await
                .optional()?)
        },
        sqlite | _conn | Err(pg_only())
    )?;
    Ok(row.map(|(content, metadata, vector)| Document {
        id: id.to_owned(),
        content,
        metadata,
        vector: with_vector.then_some(vector.0),
    }))
}

/// Up to `limit` documents with ids after `after`, by id, with vectors.
pub(super) async fn page(
    db: &Database,
    collection: &Collection,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Document>> {
    let rows: Vec<(String, Option<String>, Value, PgVector)> = with_conn!(
        db,
        pg | conn | {
            let mut query = documents::table
                .filter(documents::collection_id.eq(&collection.id))
                .select((
                    documents::id,
                    documents::content,
                    documents::metadata,
                    documents::embedding,
                ))
                .order(documents::id)
                .limit(limit)
                .into_boxed();
            if let Some(after) = after {
                query = query.filter(documents::id.gt(after));
            }
            Ok(query.load(conn).await?)
        },
        sqlite | _conn | Err(pg_only())
    )?;
    Ok(rows
        .into_iter()
        .map(|(id, content, metadata, vector)| Document {
            id,
            content,
            metadata,
            vector: Some(vector.0),
        })
        .collect())
}

pub(super) async fn delete(
    db: &Database,
    collection: &Collection,
    ids: &[String],
) -> Result<usize> {
    with_conn!(
        db,
        pg | conn | {
            Ok(diesel::delete(
                documents::table
                    .filter(documents::collection_id.eq(&collection.id))
                    .filter(documents::id.eq_any(ids)),
            )
            .execute(conn)
            .await?)
        },
        sqlite | _conn | Err(pg_only())
    )
}

/// A search hit as PostgreSQL returns it: by position from the prepared
/// unfiltered statement, by name from a filtered one.
#[derive(Queryable, QueryableByName)]
struct HitRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Double)]
    distance: f64,
    #[diesel(sql_type = Nullable<Text>)]
    content: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    metadata: Option<Value>,
    #[diesel(sql_type = Nullable<Vector>)]
    embedding: Option<PgVector>,
}

/// The filtered search statement and its binds after the query vector (`$1`).
///
/// The query vector's parameter is declared in SQL (`$1::vector`): its bind
/// names no type (see [`Vector`]).
pub(super) fn search_sql(collection: &Collection, search: &Search) -> (String, Vec<SqlBind>) {
    let op = operator(collection.metric);
    let expr = distance_expression(collection, search);
    let mut binds = Vec::new();
    let filter = search
        .filter
        .as_ref()
        .map(|f| format!(" AND {}", f.to_sql(2, &mut binds)))
        .unwrap_or_default();
    let sql = format!(
        "SELECT id, ({expr} {op} $1::vector) AS distance, {} FROM documents \
         WHERE collection_id = '{}'{filter} ORDER BY {expr} {op} $1::vector LIMIT {}",
        result_columns(search),
        collection.id,
        search.k,
    );
    (sql, binds)
}

/// The `LIMIT` of an unfiltered search: `k` rounded up to one of a few
/// sizes, so a connection keeps few statements per collection.
fn limit_bucket(k: usize) -> usize {
    const BUCKETS: [usize; 6] = [10, 20, 50, 100, 200, 500];
    BUCKETS
        .into_iter()
        .find(|&b| k <= b)
        .unwrap_or(super::model::MAX_K as usize)
}

/// An unfiltered search, which diesel keeps prepared on each connection.
///
/// Its text depends only on the collection, the columns asked for and the
/// `LIMIT` bucket; the query vector is the one bind. With the limit a
/// literal, PostgreSQL's generic plan is the HNSW index scan, so after a
/// few executions a search is neither parsed nor planned again (a bound
/// `LIMIT` makes the generic plan a full sort, and every execution is
/// planned from scratch). Rows past `k` are dropped by the caller.
/// (`sql_query` statements are never cached, and a filter's shape would
/// make the text unbounded.)
struct UnfilteredSearch<'a> {
    /// The statement before and after its one bind.
    head: String,
    tail: String,
    vector: VectorBind<'a>,
}

impl UnfilteredSearch<'_> {
    fn new<'a>(collection: &Collection, search: &'a Search) -> UnfilteredSearch<'a> {
        let op = operator(collection.metric);
        let expr = distance_expression(collection, search);
        UnfilteredSearch {
            head: format!("SELECT id, ({expr} {op} "),
            tail: format!(
                "::vector) AS distance, {} FROM documents WHERE collection_id = '{}' \
                 ORDER BY {expr} {op} $1::vector LIMIT {}",
                result_columns(search),
                collection.id,
                limit_bucket(search.k),
            ),
            vector: VectorBind(&search.vector),
        }
    }
}

impl diesel::query_builder::QueryFragment<Pg> for UnfilteredSearch<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, Pg>,
    ) -> QueryResult<()> {
        out.push_sql(&self.head);
        out.push_bind_param::<Vector, _>(&self.vector)?;
        out.push_sql(&self.tail);
        Ok(())
    }
}

impl diesel::query_builder::QueryId for UnfilteredSearch<'_> {
    type QueryId = ();
    // No static id: the statement cache keys it by its SQL text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for UnfilteredSearch<'_> {
    /// The columns of [`HitRow`], in order.
    type SqlType = (
        Text,
        Double,
        Nullable<Text>,
        Nullable<Jsonb>,
        Nullable<Vector>,
    );
}

/// The distance expression: the cast makes the planner use the
/// collection's partial HNSW index; without it the search is an exact scan.
fn distance_expression(collection: &Collection, search: &Search) -> String {
    if search.exact {
        "embedding".to_owned()
    } else {
        format!("embedding::vector({})", collection.dimension)
    }
}

/// `content, metadata, embedding`, each NULL when not asked for.
fn result_columns(search: &Search) -> String {
    let column = |wanted: bool, column: &str, ty: &str| {
        if wanted {
            column.to_owned()
        } else {
            format!("NULL::{ty} AS {column}")
        }
    };
    format!(
        "{}, {}, {}",
        column(search.include.content, "content", "text"),
        column(search.include.metadata, "metadata", "jsonb"),
        column(search.include.vector, "embedding", "vector"),
    )
}

pub(super) async fn search(
    db: &Database,
    collection: &Collection,
    search: &Search,
) -> Result<Vec<SearchHit>> {
    let unfiltered = || UnfilteredSearch::new(collection, search);
    // Built only for a filtered search: the unfiltered one has its own statement.
    let (sql, binds) = if search.filter.is_some() {
        search_sql(collection, search)
    } else {
        (String::new(), Vec::new())
    };
    let query = || {
        let mut q = diesel::sql_query(sql.as_str())
            .into_boxed::<Pg>()
            .bind::<Vector, _>(VectorBind(&search.vector));
        for bind in &binds {
            q = match bind {
                SqlBind::Path(p) => q.bind::<Array<Text>, _>(p.clone()),
                SqlBind::Json(v) => q.bind::<Jsonb, _>(v.clone()),
                SqlBind::Float(f) => q.bind::<Double, _>(*f),
                SqlBind::Text(t) => q.bind::<Text, _>(t.clone()),
            };
        }
        q
    };
    // ef_search below k would cut the candidate list short of k.
    let ef_search = search
        .ef_search
        .map(|ef| {
            ef.max(u16::try_from(search.k).unwrap_or(u16::MAX))
                .min(1000)
        })
        .or_else(|| {
            (search.k > usize::from(super::model::DEFAULT_EF_SEARCH))
                .then(|| u16::try_from(search.k.min(1000)).unwrap_or(1000))
        });
    let mut rows: Vec<HitRow> = with_conn!(
        db,
        pg | conn | {
            match (ef_search, search.filter.is_some()) {
                (None, false) => Ok(unfiltered().load::<HitRow>(conn).await?),
                (None, true) => Ok(query().load::<HitRow>(conn).await?),
                (Some(ef), filtered) => {
                    conn.write_transaction(async |c| {
                        diesel::sql_query(format!("SET LOCAL hnsw.ef_search = {ef}"))
                            .execute(c)
                            .await?;
                        if filtered {
                            Ok(query().load::<HitRow>(c).await?)
                        } else {
                            Ok(unfiltered().load::<HitRow>(c).await?)
                        }
                    })
                    .await
                }
            }
        },
        sqlite | _conn | Err(pg_only())
    )?;
    // Iterative index scans in relaxed order may return neighbours slightly
    // out of order; the contract is best first.
    rows.sort_by(|a, b| a.distance.total_cmp(&b.distance));
    rows.truncate(search.k);
    Ok(rows
        .into_iter()
        .map(|row| SearchHit {
            id: row.id,
            score: collection.metric.score(row.distance),
            distance: row.distance,
            content: row.content.filter(|_| search.include.content),
            metadata: row.metadata.filter(|_| search.include.metadata),
            vector: row.embedding.map(|v| v.0),
        })
        .collect())
}
