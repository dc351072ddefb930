//! Vector collections and search over either backend.
//!
//! PostgreSQL keeps every collection in one `documents` table with a partial
//! HNSW index per collection (`embedding::vector(<dim>)`, the metric's
//! operator class, `WHERE collection_id = …`). The embedded backend persists
//! in SQLite and searches exactly from memory ([`exact`]).

mod embedded;
mod exact;
pub mod filter;
pub mod model;
mod pg;
pub mod transfer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::schema::collections;
use crate::db::{Database, WriteTransaction, with_conn};
use crate::error::{Error, Result};
use crate::time::{now_ms, rfc3339_ms};
pub use model::{
    Collection, DEFAULT_EF_SEARCH, Document, MAX_COMPONENT, Metric, NewCollection, NewDocument,
    SearchHit, SearchRequest,
};
use model::{CollectionName, Dimension};
pub use pg::{HNSW_EF_CONSTRUCTION, HNSW_M};

/// How long a replica trusts its cached view of a collection (another
/// replica may drop and re-create it).
const COLLECTION_CACHE_TTL: Duration = Duration::from_secs(2);

/// Collections, documents and search.
pub struct Vectors {
    db: Arc<Database>,
    cache: Mutex<HashMap<String, (Instant, Collection)>>,
    embedded: Option<embedded::Indexes>,
}

#[derive(Queryable)]
struct CollectionRow {
    id: String,
    name: String,
    dimension: i32,
    metric: String,
    created_at: i64,
}

impl CollectionRow {
    fn into_collection(self) -> Result<Collection> {
        Ok(Collection {
            id: self.id,
            name: self.name,
            dimension: usize::try_from(self.dimension).unwrap_or_default(),
            metric: self.metric.parse()?,
            created_at: rfc3339_ms(self.created_at),
            document_count: None,
        })
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn not_found(name: &str) -> Error {
    Error::not_found(
        "collection_not_found",
        format!("collection {name:?} does not exist"),
    )
}

impl Vectors {
    /// The vector service over `db`.
    pub fn new(db: Arc<Database>) -> Self {
        let embedded = (!db.is_postgres()).then(embedded::Indexes::default);
        Self {
            db,
            cache: Mutex::new(HashMap::new()),
            embedded,
        }
    }

    /// Creates a collection (and, on PostgreSQL, its HNSW index).
    pub async fn create_collection(&self, new: NewCollection) -> Result<Collection> {
        let name = CollectionName::parse(&new.name)?;
        let dimension = Dimension::new(new.dimension)?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let created_at = now_ms();
        let index_ddl = self
            .db
            .is_postgres()
            .then(|| pg::create_index_sql(&id, dimension.get(), new.metric));
        let dim = i32::try_from(dimension.get()).unwrap_or_default();
        let result: Result<()> = with_conn!(&self.db, |conn| {
            conn.write_transaction(async |c| {
                diesel::insert_into(collections::table)
                    .values((
                        collections::id.eq(&id),
                        collections::name.eq(name.as_str()),
                        collections::dimension.eq(dim),
                        collections::metric.eq(new.metric.as_str()),
                        collections::created_at.eq(created_at),
                    ))
                    .execute(c)
                    .await?;
                if let Some(ddl) = &index_ddl {
                    diesel::sql_query(ddl).execute(c).await?;
                }
                Ok(())
            })
            .await
        });
        match result {
            Err(e) if e.code() == "already_exists" => {
                return Err(Error::conflict(
                    "collection_exists",
                    format!("collection {:?} already exists", name.as_str()),
                ));
            }
            other => other?,
        }
        let collection = Collection {
            id,
            name: name.as_str().to_owned(),
            dimension: dimension.get(),
            metric: new.metric,
            created_at: rfc3339_ms(created_at),
            document_count: Some(0),
        };
        self.remember(&collection);
        Ok(collection)
    }

    /// All collections, by name.
    pub async fn list_collections(&self) -> Result<Vec<Collection>> {
        let rows: Vec<CollectionRow> = with_conn!(&self.db, |conn| {
            Ok(collections::table
                .order(collections::name)
                .load::<CollectionRow>(conn)
                .await?)
        })?;
        rows.into_iter()
            .map(CollectionRow::into_collection)
            .collect()
    }

    /// A collection with its document count.
    pub async fn get_collection(&self, name: &str) -> Result<Collection> {
        let mut collection = self.load(name).await?;
        let id = collection.id.clone();
        let count: Vec<Count> = with_conn!(&self.db, |conn| {
            Ok(
                diesel::sql_query("SELECT count(*) AS n FROM documents WHERE collection_id = $1")
                    .bind::<diesel::sql_types::Text, _>(&id)
                    .load::<Count>(conn)
                    .await?,
            )
        })?;
        collection.document_count = count
            .into_iter()
            .next()
            .map(|c| u64::try_from(c.n).unwrap_or(0));
        Ok(collection)
    }

    /// Deletes a collection and all its documents.
    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        let collection = self.fresh(name).await?;
        let drop_index = self
            .db
            .is_postgres()
            .then(|| pg::drop_index_sql(&collection.id));
        let id = collection.id.clone();
        with_conn!(&self.db, |conn| {
            conn.write_transaction(async |c| {
                diesel::sql_query("DELETE FROM documents WHERE collection_id = $1")
                    .bind::<diesel::sql_types::Text, _>(&id)
                    .execute(c)
                    .await?;
                diesel::delete(collections::table.filter(collections::id.eq(&id)))
                    .execute(c)
                    .await?;
                if let Some(ddl) = &drop_index {
                    diesel::sql_query(ddl).execute(c).await?;
                }
                Ok(())
            })
            .await
        })?;
        self.forget(name);
        if let Some(embedded) = &self.embedded {
            embedded.forget(&collection.id);
        }
        Ok(())
    }

    /// Inserts or replaces documents in one transaction: all or nothing.
    pub async fn upsert(&self, name: &str, mut documents: Vec<NewDocument>) -> Result<usize> {
        let collection = self.load(name).await?;
        model::check_batch(&mut documents, &collection)?;
        let result = match &self.embedded {
            Some(embedded) => embedded.upsert(&self.db, &collection, &documents).await,
            None => pg::upsert(&self.db, &collection, &documents).await,
        };
        self.on_missing_collection(name, result)
    }

    /// One document.
    pub async fn get_document(&self, name: &str, id: &str, with_vector: bool) -> Result<Document> {
        let collection = self.load(name).await?;
        model::check_document_id(id)?;
        let document = match &self.embedded {
            Some(embedded) => embedded.get(&self.db, &collection, id, with_vector).await?,
            None => pg::get(&self.db, &collection, id, with_vector).await?,
        };
        document.ok_or_else(|| {
            Error::not_found(
                "document_not_found",
                format!("document {id:?} is not in collection {name:?}"),
            )
        })
    }

    /// Up to `limit` (1 to 1000) documents of a collection with ids after
    /// `after`, in id order, with their vectors: a stable way to read a whole
    /// collection page by page (what [`transfer::export`] does).
    pub async fn documents_page(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>> {
        let collection = self.load(name).await?;
        if limit == 0 || limit > model::MAX_BATCH {
            return Err(Error::invalid(
                "invalid_limit",
                format!("a page holds 1 to {} documents", model::MAX_BATCH),
            ));
        }
        let limit = i64::try_from(limit).unwrap_or(1);
        match &self.embedded {
            Some(embedded) => embedded.page(&self.db, &collection, after, limit).await,
            None => pg::page(&self.db, &collection, after, limit).await,
        }
    }

    /// Deletes documents by id; returns how many existed.
    pub async fn delete_documents(&self, name: &str, ids: Vec<String>) -> Result<usize> {
        let collection = self.load(name).await?;
        if ids.is_empty() || ids.len() > model::MAX_BATCH {
            return Err(Error::invalid(
                "invalid_batch",
                format!("give 1 to {} ids", model::MAX_BATCH),
            ));
        }
        for id in &ids {
            model::check_document_id(id)?;
        }
        match &self.embedded {
            Some(embedded) => embedded.delete(&self.db, &collection, &ids).await,
            None => pg::delete(&self.db, &collection, &ids).await,
        }
    }

    /// The `k` nearest documents to the query that pass its filter, best first.
    pub async fn search(&self, name: &str, request: SearchRequest) -> Result<Vec<SearchHit>> {
        let collection = self.load(name).await?;
        let search = request.validate(&collection)?;
        match &self.embedded {
            Some(embedded) => embedded.search(&self.db, &collection, search).await,
            None => pg::search(&self.db, &collection, &search).await,
        }
    }

    /// A collection from the short-lived cache, or the database.
    async fn load(&self, name: &str) -> Result<Collection> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .filter(|(at, _)| at.elapsed() < COLLECTION_CACHE_TTL)
            .map(|(_, c)| c.clone());
        match cached {
            Some(collection) => Ok(collection),
            None => self.fresh(name).await,
        }
    }

    /// A collection from the database, refreshing the cache.
    async fn fresh(&self, name: &str) -> Result<Collection> {
        CollectionName::parse(name)?;
        let row: Option<CollectionRow> = with_conn!(&self.db, |conn| {
            Ok(collections::table
                .filter(collections::name.eq(name))
                .first::<CollectionRow>(conn)
                .await
                .optional()?)
        })?;
        let Some(row) = row else {
            self.forget(name);
            return Err(not_found(name));
        };
        let collection = row.into_collection()?;
        self.remember(&collection);
        Ok(collection)
    }

    fn remember(&self, collection: &Collection) {
        let mut entry = collection.clone();
        entry.document_count = None;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(collection.name.clone(), (Instant::now(), entry));
    }

    fn forget(&self, name: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// A write that hit a collection deleted by another replica: say so.
    fn on_missing_collection<T>(&self, name: &str, result: Result<T>) -> Result<T> {
        match result {
            Err(Error::Internal { detail }) if detail.contains("foreign key") => {
                self.forget(name);
                Err(not_found(name))
            }
            other => other,
        }
    }
}
