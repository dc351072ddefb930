//! Collections, documents and searches, with the validation every backend shares.

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroU16;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::filter::Filter;
use crate::error::{Error, Result};

/// Largest dimension: pgvector's HNSW index covers `vector` up to 2000.
pub const MAX_DIMENSION: u16 = 2000;
/// Most documents in one upsert.
pub const MAX_BATCH: usize = 1000;
/// Largest `k`.
pub const MAX_K: u32 = 1000;
/// Largest serialized metadata object, in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Largest `content`, in bytes.
pub const MAX_CONTENT_BYTES: usize = 1024 * 1024;
/// Largest document id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// `ef_search` when a request gives none.
pub const DEFAULT_EF_SEARCH: u16 = 40;
/// Largest magnitude of one vector component. Both backends compute
/// distances in `f32` (pgvector does, and the embedded index matches it);
/// with this bound no sum of squares over [`MAX_DIMENSION`] components can
/// overflow, so no score is ever infinite or `null`.
pub const MAX_COMPONENT: f32 = 1e15;

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Cosine similarity. `score` = cos θ in [-1, 1]; `distance` = 1 − cos θ.
    Cosine,
    /// Euclidean distance. `distance` = ‖a − b‖; `score` = −distance.
    L2,
    /// Inner product. `score` = a·b; `distance` = −a·b (pgvector's `<#>`).
    InnerProduct,
}

impl Metric {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::InnerProduct => "inner_product",
        }
    }

    /// Higher-is-better score from a pgvector-style distance.
    pub fn score(self, distance: f64) -> f64 {
        match self {
            Metric::Cosine => 1.0 - distance,
            Metric::L2 | Metric::InnerProduct => -distance,
        }
    }
}

impl FromStr for Metric {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "l2" => Ok(Metric::L2),
            "inner_product" => Ok(Metric::InnerProduct),
            other => Err(Error::invalid(
                "invalid_metric",
                format!("metric must be cosine, l2 or inner_product, got {other:?}"),
            )),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A valid collection name: 1–64 of `[A-Za-z0-9_-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CollectionName(String);

impl CollectionName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self> {
        let ok = (1..=64).contains(&name.len())
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(Error::invalid(
                "invalid_collection_name",
                "collection names are 1 to 64 letters, digits, '_' or '-', starting with a letter or digit",
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A vector dimension in `1..=MAX_DIMENSION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Dimension(NonZeroU16);

impl Dimension {
    /// Validates `n`.
    pub fn new(n: i64) -> Result<Self> {
        u16::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_DIMENSION)
            .and_then(NonZeroU16::new)
            .map(Dimension)
            .ok_or_else(|| {
                Error::invalid(
                    "invalid_dimension",
                    format!("dimension must be between 1 and {MAX_DIMENSION}, got {n}"),
                )
            })
    }

    /// The dimension as a length.
    pub fn get(self) -> usize {
        usize::from(self.0.get())
    }
}

/// What creating a collection takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCollection {
    /// Unique name.
    pub name: String,
    /// Length of every vector.
    pub dimension: i64,
    /// Comparison (default cosine).
    #[serde(default = "default_metric")]
    pub metric: Metric,
}

fn default_metric() -> Metric {
    Metric::Cosine
}

/// A stored collection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Collection {
    /// Internal id (stable across renames; never reused).
    #[serde(skip)]
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Length of every vector.
    pub dimension: usize,
    /// Comparison.
    pub metric: Metric,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Number of documents, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_count: Option<u64>,
}

/// One document to insert or replace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDocument {
    /// Caller-chosen id, unique within the collection.
    pub id: String,
    /// The embedding.
    pub vector: Vec<f32>,
    /// Optional text.
    #[serde(default)]
    pub content: Option<String>,
    /// Optional JSON object (default `{}`).
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    /// Id within the collection.
    pub id: String,
    /// Text, if any.
    pub content: Option<String>,
    /// JSON object.
    pub metadata: Value,
    /// The embedding, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// A search request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The query embedding.
    pub vector: Vec<f32>,
    /// How many results (default 10).
    #[serde(default = "default_k")]
    pub k: u32,
    /// Metadata filter.
    #[serde(default)]
    pub filter: Option<Value>,
    /// Extra fields to return: `content`, `metadata`, `vector`.
    #[serde(default = "default_include")]
    pub include: Vec<String>,
    /// HNSW candidate list size (pgvector only; 1–1000, raised to `k`).
    #[serde(default)]
    pub ef_search: Option<u16>,
    /// Exact search: compare with every document (slower, recall 1.0).
    #[serde(default)]
    pub exact: bool,
}

fn default_k() -> u32 {
    10
}

fn default_include() -> Vec<String> {
    vec!["content".into(), "metadata".into()]
}

/// Which optional fields a search returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Include {
    /// `content`.
    pub content: bool,
    /// `metadata`.
    pub metadata: bool,
    /// `vector`.
    pub vector: bool,
}

/// A validated search.
#[derive(Debug, Clone)]
pub struct Search {
    /// Query embedding (normalised for cosine on the embedded backend).
    pub vector: Vec<f32>,
    /// Number of results.
    pub k: usize,
    /// Parsed filter.
    pub filter: Option<Filter>,
    /// Optional fields.
    pub include: Include,
    /// HNSW `ef_search`, when different from the default.
    pub ef_search: Option<u16>,
    /// Brute-force search.
    pub exact: bool,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    /// Document id.
    pub id: String,
    /// Higher is more similar (see [`Metric`]).
    pub score: f64,
    /// pgvector-style distance: lower is closer.
    pub distance: f64,
    /// Text, if included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Metadata, if included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Embedding, if included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// Checks a vector's length and values against a collection.
pub fn check_vector(vector: &[f32], collection: &Collection, what: &str) -> Result<()> {
    if vector.len() != collection.dimension {
        return Err(Error::invalid(
            "dimension_mismatch",
            format!(
                "{what} has {} dimensions; collection {:?} has {}",
                vector.len(),
                collection.name,
                collection.dimension
            ),
        ));
    }
    if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "invalid_vector",
            format!("{what} has a non-finite value (NaN or infinity) at index {i}"),
        ));
    }
    if let Some(i) = vector.iter().position(|v| v.abs() > MAX_COMPONENT) {
        return Err(Error::invalid(
            "invalid_vector",
            format!("{what} has a value beyond ±{MAX_COMPONENT:e} at index {i}"),
        ));
    }
    // The squared norm as pgvector computes it: zero or below f32's normal
    // range leaves cosine without a direction (its distance would be NaN).
    let squared_norm: f32 = vector.iter().map(|v| v * v).sum();
    if collection.metric == Metric::Cosine && squared_norm < f32::MIN_POSITIVE {
        return Err(Error::invalid(
            "invalid_vector",
            format!(
                "{what} is all zeros or too close to zero to have a direction for cosine similarity"
            ),
        ));
    }
    Ok(())
}

/// Validates a batch; nothing is written unless every document passes.
pub fn check_batch(documents: &mut [NewDocument], collection: &Collection) -> Result<()> {
    if documents.is_empty() {
        return Err(Error::invalid("empty_batch", "documents must not be empty"));
    }
    if documents.len() > MAX_BATCH {
        return Err(Error::invalid(
            "batch_too_large",
            format!(
                "at most {MAX_BATCH} documents per request, got {}",
                documents.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(documents.len());
    for (i, doc) in documents.iter_mut().enumerate() {
        check_document_id(&doc.id)?;
        if !seen.insert(doc.id.as_str()) {
            return Err(Error::invalid(
                "duplicate_id",
                format!("document id {:?} appears twice in the batch", doc.id),
            ));
        }
        check_vector(&doc.vector, collection, &format!("documents[{i}].vector"))?;
        if doc
            .content
            .as_ref()
            .is_some_and(|c| c.len() > MAX_CONTENT_BYTES)
        {
            return Err(Error::invalid(
                "content_too_large",
                format!("documents[{i}].content exceeds {MAX_CONTENT_BYTES} bytes"),
            ));
        }
        match doc
            .metadata
            .get_or_insert_with(|| Value::Object(Default::default()))
        {
            Value::Object(_) => {}
            _ => {
                return Err(Error::invalid(
                    "invalid_metadata",
                    format!("documents[{i}].metadata must be a JSON object"),
                ));
            }
        }
        if doc.content.as_ref().is_some_and(|c| c.contains('\0')) {
            return Err(Error::invalid(
                "invalid_content",
                format!("documents[{i}].content must not contain NUL characters"),
            ));
        }
        if doc.metadata.as_ref().is_some_and(super::filter::has_nul) {
            return Err(Error::invalid(
                "invalid_metadata",
                format!("documents[{i}].metadata must not contain NUL characters"),
            ));
        }
        let size = serde_json::to_vec(&doc.metadata)?.len();
        if size > MAX_METADATA_BYTES {
            return Err(Error::invalid(
                "metadata_too_large",
                format!(
                    "documents[{i}].metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}"
                ),
            ));
        }
    }
    Ok(())
}

/// A document id: 1–256 bytes without control characters.
pub fn check_document_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(Error::invalid(
            "invalid_document_id",
            format!("document ids are 1 to {MAX_ID_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

impl SearchRequest {
    /// Validates the request against `collection`.
    pub fn validate(self, collection: &Collection) -> Result<Search> {
        check_vector(&self.vector, collection, "vector")?;
        if self.k == 0 || self.k > MAX_K {
            return Err(Error::invalid(
                "invalid_k",
                format!("k must be between 1 and {MAX_K}, got {}", self.k),
            ));
        }
        if let Some(ef) = self.ef_search
            && !(1..=1000).contains(&ef)
        {
            return Err(Error::invalid(
                "invalid_ef_search",
                format!("ef_search must be between 1 and 1000, got {ef}"),
            ));
        }
        let mut include = Include::default();
        for field in &self.include {
            match field.as_str() {
                "content" => include.content = true,
                "metadata" => include.metadata = true,
                "vector" => include.vector = true,
                other => {
                    return Err(Error::invalid(
                        "invalid_include",
                        format!("include may list content, metadata and vector, got {other:?}"),
                    ));
                }
            }
        }
        let filter = self.filter.as_ref().map(Filter::parse).transpose()?;
        Ok(Search {
            vector: self.vector,
            k: self.k as usize,
            filter,
            include,
            ef_search: self.ef_search,
            exact: self.exact,
        })
    }
}
