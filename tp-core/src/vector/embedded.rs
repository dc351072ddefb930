//! Documents in SQLite, searched exactly from memory.
//!
//! Each collection's index loads on first use. Writes to a collection are
//! serialised: the SQLite transaction commits first, then the in-memory
//! index changes, so memory never holds what the database does not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use super::exact::ExactIndex;
use super::model::{Collection, Document, NewDocument, Search, SearchHit};
use crate::db::{Database, WriteTransaction, with_conn};
use crate::error::{Error, Result};
use crate::time::now_ms;

mod table {
    diesel::table! {
        documents (collection_id, id) {
            collection_id -> Text,
            id -> Text,
            embedding -> Binary,
            content -> Nullable<Text>,
            metadata -> Text,
            updated_at -> BigInt,
        }
    }
}
use table::documents;

/// Scans larger than this many floats run on the blocking pool.
const INLINE_SCAN_FLOATS: usize = 256 * 1024;

/// One collection's index and the lock that serialises its writers.
#[derive(Default)]
struct Slot {
    index: tokio::sync::OnceCell<Arc<RwLock<ExactIndex>>>,
    writer: tokio::sync::Mutex<()>,
}

/// The in-memory indexes of all loaded collections.
#[derive(Default)]
pub(super) struct Indexes {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

fn sqlite_only() -> Error {
    Error::internal("embedded document operation on PostgreSQL")
}

fn to_blob(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_blob(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

impl Indexes {
    fn slot(&self, collection_id: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(collection_id.to_owned())
            .or_default()
            .clone()
    }

    pub(super) fn forget(&self, collection_id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(collection_id);
    }

    async fn index(
        &self,
        db: &Database,
        collection: &Collection,
    ) -> Result<Arc<RwLock<ExactIndex>>> {
        let slot = self.slot(&collection.id);
        slot.index
            .get_or_try_init(|| load(db, collection))
            .await
            .cloned()
    }

    pub(super) async fn upsert(
        &self,
        db: &Database,
        collection: &Collection,
        docs: &[NewDocument],
    ) -> Result<usize> {
        let index = self.index(db, collection).await?;
        let slot = self.slot(&collection.id);
        let _writer = slot.writer.lock().await;
        let now = now_ms();
        let metadata: Vec<String> = docs
            .iter()
            .map(|d| serde_json::to_string(d.metadata.as_ref().unwrap_or(&Value::Null)))
            .collect::<Result<_, _>>()?;
        let rows: Vec<_> = docs
            .iter()
            .zip(&metadata)
            .map(|(d, meta)| {
                (
                    documents::collection_id.eq(collection.id.as_str()),
                    documents::id.eq(d.id.as_str()),
                    documents::embedding.eq(to_blob(&d.vector)),
                    documents::content.eq(d.content.as_deref()),
                    documents::metadata.eq(meta.as_str()),
                    documents::updated_at.eq(now),
                )
            })
            .collect();
        let written: usize = with_conn!(
            db,
            pg | _conn | Err(sqlite_only()),
            sqlite | conn | {
                // diesel has no batch upsert for SQLite; one prepared statement
                // per row inside the transaction is still all or nothing.
                conn.write_transaction(async |c| {
                    let mut written = 0;
                    for row in &rows {
                        written += diesel::insert_into(documents::table)
                            .values(row.clone())
                            .on_conflict((documents::collection_id, documents::id))
                            .do_update()
                            .set((
                                documents::embedding.eq(excluded(documents::embedding)),
                                documents::content.eq(excluded(documents::content)),
                                documents::metadata.eq(excluded(documents::metadata)),
                                documents::updated_at.eq(excluded(documents::updated_at)),
                            ))
                            .execute(c)
                            .await?;
                    }
                    Ok(written)
                })
                .await
            }
        )?;
        let mut index = index.write().unwrap_or_else(|e| e.into_inner());
        for doc in docs {
            index.upsert(
                &doc.id,
                &doc.vector,
                doc.metadata.clone().unwrap_or(Value::Null),
            );
        }
        Ok(written)
    }

    pub(super) async fn delete(
        &self,
        db: &Database,
        collection: &Collection,
        ids: &[String],
    ) -> Result<usize> {
        let index = self.index(db, collection).await?;
        let slot = self.slot(&collection.id);
        let _writer = slot.writer.lock().await;
        let deleted: usize = with_conn!(
            db,
            pg | _conn | Err(sqlite_only()),
            sqlite | conn | {
                Ok(diesel::delete(
                    documents::table
                        .filter(documents::collection_id.eq(&collection.id))
                        .filter(documents::id.eq_any(ids)),
                )
                .execute(conn)
                .await?)
            }
        )?;
        let mut index = index.write().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            index.remove(id);
        }
        Ok(deleted)
    }

    pub(super) async fn get(
        &self,
        db: &Database,
        collection: &Collection,
        id: &str,
        with_vector: bool,
    ) -> Result<Option<Document>> {
        let row: Option<(Option<String>, String, Vec<u8>)> = with_conn!(
            db,
            pg | _conn | Err(sqlite_only()),
            sqlite | conn | {
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
            }
        )?;
        row.map(|(content, metadata, blob)| {
            Ok(Document {
                id: id.to_owned(),
                content,
                metadata: serde_json::from_str(&metadata)?,
                vector: with_vector.then(|| from_blob(&blob)),
            })
        })
        .transpose()
    }

    /// Up to `limit` documents with ids after `after`, by id, with vectors.
    pub(super) async fn page(
        &self,
        db: &Database,
        collection: &Collection,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Document>> {
        let rows: Vec<(String, Option<String>, String, Vec<u8>)> = with_conn!(
            db,
            pg | _conn | Err(sqlite_only()),
            sqlite | conn | {
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
            }
        )?;
        rows.into_iter()
            .map(|(id, content, metadata, blob)| {
                Ok(Document {
                    id,
                    content,
                    metadata: serde_json::from_str(&metadata)?,
                    vector: Some(from_blob(&blob)),
                })
            })
            .collect()
    }

    pub(super) async fn search(
        &self,
        db: &Database,
        collection: &Collection,
        search: Search,
    ) -> Result<Vec<SearchHit>> {
        let index = self.index(db, collection).await?;
        let include = search.include;
        let scan = {
            let index = index.clone();
            move || {
                let index = read(&index);
                let hits = index.search(&search.vector, search.k, search.filter.as_ref());
                hits.into_iter()
                    .map(|c| SearchHit {
                        id: index.id(c.row).to_owned(),
                        score: f64::from(c.similarity),
                        distance: index.distance(c.similarity),
                        content: None,
                        metadata: include.metadata.then(|| index.metadata(c.row).clone()),
                        vector: include.vector.then(|| index.vector(c.row).to_vec()),
                    })
                    .collect::<Vec<_>>()
            }
        };
        let floats = read(&index).scan_bytes() / std::mem::size_of::<f32>();
        let mut hits = if floats > INLINE_SCAN_FLOATS {
            tokio::task::spawn_blocking(scan)
                .await
                .map_err(|e| Error::internal(format!("search task: {e}")))?
        } else {
            scan()
        };
        if collection.metric == super::Metric::L2 {
            for hit in &mut hits {
                hit.score = -hit.distance;
            }
        }
        if include.content && !hits.is_empty() {
            let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
            let contents: Vec<(String, Option<String>)> = with_conn!(
                db,
                pg | _conn | Err(sqlite_only()),
                sqlite | conn | {
                    Ok(documents::table
                        .filter(documents::collection_id.eq(&collection.id))
                        .filter(documents::id.eq_any(&ids))
                        .select((documents::id, documents::content))
                        .load(conn)
                        .await?)
                }
            )?;
            let mut contents: HashMap<String, Option<String>> = contents.into_iter().collect();
            for hit in &mut hits {
                hit.content = contents.remove(&hit.id).flatten();
            }
        }
        Ok(hits)
    }
}

/// Reads a collection's documents into a new index.
async fn load(db: &Database, collection: &Collection) -> Result<Arc<RwLock<ExactIndex>>> {
    let rows: Vec<(String, Vec<u8>, String)> = with_conn!(
        db,
        pg | _conn | Err(sqlite_only()),
        sqlite | conn | {
            Ok(documents::table
                .filter(documents::collection_id.eq(&collection.id))
                .select((documents::id, documents::embedding, documents::metadata))
                .load(conn)
                .await?)
        }
    )?;
    let mut index = ExactIndex::new(collection.dimension, collection.metric);
    for (id, blob, metadata) in rows {
        index.upsert(&id, &from_blob(&blob), serde_json::from_str(&metadata)?);
    }
    tracing::debug!(
        collection = collection.name.as_str(),
        documents = index.len(),
        "embedded index loaded"
    );
    Ok(Arc::new(RwLock::new(index)))
}
