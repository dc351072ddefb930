//! Portable export and import of collections as JSON Lines, streamed.
//!
//! The same file moves collections between backends (one embedded SQLite
//! replica to a PostgreSQL deployment) and serves as a restore drill. One
//! JSON object a line:
//!
//! ```text
//! {"tenant_plane_export":1,"tenant":"acme","exported_at":"…","collections":2}
//! {"collection":{"name":"docs","dimension":384,"metric":"cosine","documents":1200}}
//! {"document":{"id":"a","vector":[…],"content":"…","metadata":{…}}}
//! …
//! {"end":{"collections":2,"documents":2400}}
//! ```
//!
//! Documents belong to the collection line before them. The `end` line
//! makes a cut-off file detectable: an import without it fails, after
//! writing what it read, and can simply be run again on a complete file,
//! since every write is an upsert by id. Vectors keep their exact `f32`
//! values (serde writes the shortest text that reads back the same).
//!
//! An export reads each collection page by page in id order: every
//! document that exists for the whole export is in it exactly once, but it
//! is not a point-in-time snapshot of a collection being written to.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use super::Vectors;
use super::model::{MAX_BATCH, Metric, NewCollection, NewDocument};
use crate::error::{Error, Result};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Documents read per page while exporting.
const EXPORT_PAGE: usize = 500;

/// The first line.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    tenant_plane_export: u32,
    tenant: String,
    exported_at: String,
    collections: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct CollectionLine {
    name: String,
    dimension: usize,
    metric: Metric,
    /// Documents when the export started (informative: progress).
    documents: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DocumentLine {
    id: String,
    vector: Vec<f32>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct EndLine {
    collections: usize,
    documents: u64,
}

/// Every line after the header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Collection(CollectionLine),
    Document(DocumentLine),
    End(EndLine),
}

/// Where an export or import stands; given to the progress callback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The collection being worked on.
    pub collection: String,
    /// Its documents so far.
    pub documents: u64,
    /// Its documents in all, when known.
    pub expected: Option<u64>,
    /// Documents so far, all collections.
    pub total_documents: u64,
    /// Collections started so far.
    pub collections: usize,
}

/// What an export or import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TransferReport {
    /// Collections written or read.
    pub collections: usize,
    /// Documents written or read.
    pub documents: u64,
    /// Collections an import created (the others existed with the same shape).
    pub created: usize,
}

fn io(e: std::io::Error) -> Error {
    Error::internal(format!("export stream: {e}"))
}

async fn write_line<W: AsyncWrite + Unpin, T: Serialize>(out: &mut W, value: &T) -> Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    out.write_all(&line).await.map_err(io)
}

/// Writes the named collections (all when `names` is empty) to `out`.
pub async fn export<W: AsyncWrite + Unpin>(
    vectors: &Vectors,
    tenant: &str,
    names: &[String],
    out: &mut W,
    mut progress: impl FnMut(&Progress),
) -> Result<TransferReport> {
    let mut collections = Vec::new();
    if names.is_empty() {
        for c in vectors.list_collections().await? {
            collections.push(vectors.get_collection(&c.name).await?);
        }
    } else {
        for name in names {
            collections.push(vectors.get_collection(name).await?);
        }
    }
    write_line(
        out,
        &Header {
            tenant_plane_export: FORMAT_VERSION,
            tenant: tenant.to_owned(),
            exported_at: crate::time::rfc3339_ms(crate::time::now_ms()),
            collections: collections.len(),
        },
    )
    .await?;
    let mut report = TransferReport::default();
    for collection in &collections {
        write_line(
            out,
            &Line::Collection(CollectionLine {
                name: collection.name.clone(),
                dimension: collection.dimension,
                metric: collection.metric,
                documents: collection.document_count,
            }),
        )
        .await?;
        report.collections += 1;
        let mut state = Progress {
            collection: collection.name.clone(),
            documents: 0,
            expected: collection.document_count,
            total_documents: report.documents,
            collections: report.collections,
        };
        progress(&state);
        let mut after: Option<String> = None;
        loop {
            let page = vectors
                .documents_page(&collection.name, after.as_deref(), EXPORT_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            let full = page.len() == EXPORT_PAGE;
            let mut buffer = Vec::new();
            for document in page {
                let line = Line::Document(DocumentLine {
                    id: document.id,
                    vector: document.vector.unwrap_or_default(),
                    content: document.content,
                    metadata: Some(document.metadata),
                });
                serde_json::to_writer(&mut buffer, &line)?;
                buffer.push(b'\n');
                state.documents += 1;
                report.documents += 1;
            }
            out.write_all(&buffer).await.map_err(io)?;
            state.total_documents = report.documents;
            progress(&state);
            if !full {
                break;
            }
        }
    }
    write_line(
        out,
        &Line::End(EndLine {
            collections: report.collections,
            documents: report.documents,
        }),
    )
    .await?;
    out.flush().await.map_err(io)?;
    Ok(report)
}

fn bad_line(number: u64, why: impl std::fmt::Display) -> Error {
    Error::invalid("invalid_export", format!("line {number}: {why}"))
}

/// Reads an export from `input` into `vectors`, `batch` documents per
/// transaction (1 to 1000). Collections are created when missing; one that
/// exists must have the same dimension and metric. Documents are upserted,
/// so running an import again is harmless.
pub async fn import<R: AsyncBufRead + Unpin>(
    vectors: &Vectors,
    input: &mut R,
    batch: usize,
    mut progress: impl FnMut(&Progress),
) -> Result<TransferReport> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(Error::invalid(
            "invalid_batch",
            format!("the batch size is 1 to {MAX_BATCH}"),
        ));
    }
    let mut lines = input.lines();
    let mut number = 1u64;
    let first = lines
        .next_line()
        .await
        .map_err(io)?
        .ok_or_else(|| bad_line(1, "the input is empty"))?;
    let header: Header = serde_json::from_str(&first)
        .map_err(|e| bad_line(1, format!("not a tenant-plane export header ({e})")))?;
    if header.tenant_plane_export != FORMAT_VERSION {
        return Err(bad_line(
            1,
            format!(
                "format version {} is not supported (this build reads {FORMAT_VERSION})",
                header.tenant_plane_export
            ),
        ));
    }

    let mut report = TransferReport::default();
    let mut pending = Pending {
        collection: None,
        documents: Vec::with_capacity(batch),
        state: Progress::default(),
    };
    let mut end = None;
    while let Some(text) = lines.next_line().await.map_err(io)? {
        number += 1;
        if text.trim().is_empty() {
            continue;
        }
        if end.is_some() {
            return Err(bad_line(number, "text after the end line"));
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| bad_line(number, e))?;
        match line {
            Line::Collection(c) => {
                pending.flush(vectors, &mut progress).await?;
                if prepare_collection(vectors, &c).await? {
                    report.created += 1;
                }
                report.collections += 1;
                pending.state = Progress {
                    collection: c.name.clone(),
                    documents: 0,
                    expected: c.documents,
                    total_documents: report.documents,
                    collections: report.collections,
                };
                progress(&pending.state);
                pending.collection = Some(c.name);
            }
            Line::Document(d) => {
                if pending.collection.is_none() {
                    return Err(bad_line(number, "a document before any collection"));
                }
                pending.documents.push(NewDocument {
                    id: d.id,
                    vector: d.vector,
                    content: d.content,
                    metadata: d.metadata,
                });
                report.documents += 1;
                if pending.documents.len() == batch {
                    pending
                        .flush(vectors, &mut progress)
                        .await
                        .map_err(|e| at_line(e, number))?;
                }
            }
            Line::End(e) => end = Some(e),
        }
    }
    pending
        .flush(vectors, &mut progress)
        .await
        .map_err(|e| at_line(e, number))?;
    let counted = EndLine {
        collections: report.collections,
        documents: report.documents,
    };
    match end {
        None => Err(Error::invalid(
            "truncated_export",
            format!(
                "the input ends without its end line after {} collection(s) and {} document(s): \
                 it was cut off; what was read is imported, and importing a complete file again \
                 is safe",
                report.collections, report.documents
            ),
        )),
        Some(end) if end != counted => Err(Error::invalid(
            "truncated_export",
            format!(
                "the end line counts {} collection(s) and {} document(s) but the input held {} and {}",
                end.collections, end.documents, counted.collections, counted.documents
            ),
        )),
        Some(_) => Ok(report),
    }
}

/// An error of a batch, with the line it ended at.
fn at_line(e: Error, number: u64) -> Error {
    match e {
        Error::InvalidInput { code, message } => Error::InvalidInput {
            code,
            message: format!("batch ending at line {number}: {message}"),
        },
        other => other,
    }
}

/// Creates the collection, or checks that the existing one has its shape.
/// `true` when it was created.
async fn prepare_collection(vectors: &Vectors, line: &CollectionLine) -> Result<bool> {
    let dimension = i64::try_from(line.dimension).unwrap_or(i64::MAX);
    match vectors
        .create_collection(NewCollection {
            name: line.name.clone(),
            dimension,
            metric: line.metric,
        })
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == "collection_exists" => {
            let existing = vectors.get_collection(&line.name).await?;
            if existing.dimension != line.dimension || existing.metric != line.metric {
                return Err(Error::conflict(
                    "collection_mismatch",
                    format!(
                        "collection {:?} exists with dimension {} and metric {}, the export has {} and {}",
                        line.name,
                        existing.dimension,
                        existing.metric.as_str(),
                        line.dimension,
                        line.metric.as_str()
                    ),
                ));
            }
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Documents read and not written yet, and where the import stands.
struct Pending {
    /// The collection they belong to.
    collection: Option<String>,
    documents: Vec<NewDocument>,
    state: Progress,
}

impl Pending {
    /// Upserts what is pending in one transaction.
    async fn flush(
        &mut self,
        vectors: &Vectors,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<()> {
        let (Some(name), false) = (&self.collection, self.documents.is_empty()) else {
            return Ok(());
        };
        let documents = std::mem::take(&mut self.documents);
        let n = documents.len() as u64;
        vectors.upsert(name, documents).await?;
        self.state.documents += n;
        self.state.total_documents += n;
        progress(&self.state);
        Ok(())
    }
}
