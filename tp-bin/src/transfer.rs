//! `tenant-plane export` and `tenant-plane import`: collections as JSON Lines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, BufReader, BufWriter};
use tp_core::config::DatabaseUrl;
use tp_core::vector::transfer::{self, Progress, TransferReport};
use tp_core::{Config, TenantPlane};

use crate::exit;

/// Progress on stderr: at each collection, then at most once a second.
struct Reporter {
    verb: &'static str,
    last: Option<Instant>,
    collection: String,
}

impl Reporter {
    fn new(verb: &'static str) -> Self {
        Self {
            verb,
            last: None,
            collection: String::new(),
        }
    }

    fn report(&mut self, p: &Progress) {
        let new_collection = p.collection != self.collection;
        if !new_collection
            && self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.collection.clone_from(&p.collection);
        let of = p.expected.map(|n| format!(" of {n}")).unwrap_or_default();
        eprintln!(
            "{} {:?}: {}{of} documents ({} in all)",
            self.verb, p.collection, p.documents, p.total_documents
        );
    }
}

fn summary(verb: &str, report: &TransferReport, started: Instant) {
    eprintln!(
        "{verb} {} collection(s), {} document(s) in {:.1} s",
        report.collections,
        report.documents,
        started.elapsed().as_secs_f64()
    );
}

/// `tenant-plane export [--collection N]... [--output F]`.
pub async fn export(config: Config, names: Vec<String>, output: Option<PathBuf>) -> ExitCode {
    let tenant = config.tenant_id.clone();
    let plane = match TenantPlane::start_admin(config).await {
        Ok(plane) => plane,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::for_start_error(&e));
        }
    };
    let started = Instant::now();
    let mut reporter = Reporter::new("exported");
    // No file, or "-": standard output.
    let result = match output.filter(|p| p.as_path() != Path::new("-")) {
        None => {
            let mut out = BufWriter::new(tokio::io::stdout());
            run_export(&plane, &tenant, &names, &mut out, &mut reporter)
                .await
                .map_err(|e| e.to_string())
        }
        Some(path) => export_to_file(&plane, &tenant, &names, &path, &mut reporter).await,
    };
    match result {
        Ok(report) => {
            summary("exported", &report, started);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: export failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_export<W: AsyncWrite + Unpin>(
    plane: &TenantPlane,
    tenant: &str,
    names: &[String],
    out: &mut W,
    reporter: &mut Reporter,
) -> Result<TransferReport, tp_core::Error> {
    transfer::export(plane.vectors(), tenant, names, out, |p| reporter.report(p)).await
}

/// Writes next to `path` and renames at the end, so `path` only ever holds
/// a complete export.
async fn export_to_file(
    plane: &TenantPlane,
    tenant: &str,
    names: &[String],
    path: &Path,
    reporter: &mut Reporter,
) -> Result<TransferReport, String> {
    let partial = path.with_extension("partial");
    let file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let mut out = BufWriter::new(file);
    let report = match run_export(plane, tenant, names, &mut out, reporter).await {
        Ok(report) => report,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e.to_string());
        }
    };
    out.into_inner()
        .sync_all()
        .await
        .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    tokio::fs::rename(&partial, path)
        .await
        .map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
    Ok(report)
}

/// `tenant-plane import [--input F] [--batch-size N]`.
pub async fn import(config: Config, input: Option<PathBuf>, batch: usize) -> ExitCode {
    // On SQLite the serving replica keeps each collection's index in
    // memory: writing behind its back would leave it stale, so the import
    // takes the file lock and is refused while a replica runs.
    let started = match &config.database.url {
        DatabaseUrl::Sqlite(_) => TenantPlane::start(config).await.map(|(plane, _)| plane),
        DatabaseUrl::Postgres(_) => TenantPlane::start_admin(config).await,
    };
    let plane: Arc<TenantPlane> = match started {
        Ok(plane) => plane,
        Err(e) if e.code() == "database_locked" => {
            eprintln!("error: {e}; stop the replica for the import, then start it again");
            return ExitCode::from(exit::UNAVAILABLE);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::for_start_error(&e));
        }
    };
    let started = Instant::now();
    let mut reporter = Reporter::new("imported");
    let result = match input.filter(|p| p.as_path() != Path::new("-")) {
        None => {
            let mut reader = BufReader::new(tokio::io::stdin());
            transfer::import(plane.vectors(), &mut reader, batch, |p| reporter.report(p)).await
        }
        Some(path) => match tokio::fs::File::open(&path).await {
            Ok(file) => {
                let mut reader = BufReader::new(file);
                transfer::import(plane.vectors(), &mut reader, batch, |p| reporter.report(p)).await
            }
            Err(e) => {
                eprintln!("error: cannot open {}: {e}", path.display());
                return ExitCode::from(exit::CONFIG);
            }
        },
    };
    match result {
        Ok(report) => {
            summary("imported", &report, started);
            eprintln!("created {} collection(s)", report.created);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: import stopped: {e} ({})", e.code());
            ExitCode::FAILURE
        }
    }
}
