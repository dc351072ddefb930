//! The tenant plane's benchmark: real `tenant-plane` processes, PostgreSQL,
//! Redis and SQLite on loopback, each result next to a baseline measured in
//! the same run.
//!
//! ```sh
//! source .test-env/env.sh            # from scripts/test-deps.sh
//! export TP_TEST_STATE_DIR=/tmp/tp-bench-state; mkdir -p $TP_TEST_STATE_DIR
//! cargo build --release -p tp-bin    # the replicas run target/release/tenant-plane
//! cargo bench -p tp-tests --bench plane                # every section
//! cargo bench -p tp-tests --bench plane -- auth        # one section (vector, auth, ratelimit, tls)
//! TP_BENCH_VECTORS=20000 cargo bench -p tp-tests --bench plane -- vector   # quick
//! ```
//!
//! Sections:
//! - `vector`: HTTP search vs the same SQL on the same database, HNSW
//!   recall@10 against brute force, and the embedded exact scan against the
//!   machine's memory read bandwidth;
//! - `auth`: authenticated vs unauthenticated requests on one replica, and a
//!   bare hyper server;
//! - `ratelimit`: no limiter vs the local limiter vs the Redis limiter, and
//!   one Redis round trip;
//! - `tls`: searches and authenticated requests with PostgreSQL (through
//!   PgBouncer) and Redis over TLS vs in plaintext.
//!
//! Every load loop is bounded by a request count and by time. Client and
//! server share the machine's cores, which the report says.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tp_tests::PgCluster;

#[path = "plane/auth.rs"]
mod auth;
#[path = "plane/data.rs"]
mod data;
#[path = "plane/load.rs"]
mod load;
#[path = "plane/report.rs"]
mod report;
#[path = "plane/tls.rs"]
mod tls;
#[path = "plane/vector.rs"]
mod vector;

use report::Summary;

/// Knobs, from `TP_BENCH_*` variables.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Documents loaded for the vector section.
    pub vectors: usize,
    /// Query vectors (recall and latency).
    pub queries: usize,
    /// Concurrent connections of the throughput loads.
    pub concurrency: usize,
    /// Upper bound of one measurement round.
    pub window: Duration,
    /// Rounds per variant; variants are interleaved round by round.
    pub rounds: usize,
    /// Relative spread of points around their cluster centre.
    pub spread: f64,
    /// Power-law decay of the per-direction noise variance (0: isotropic).
    pub decay: f64,
}

impl Opts {
    fn from_env() -> Result<Self, String> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a valid value")),
                Err(_) => Ok(default),
            }
        }
        let opts = Opts {
            vectors: var("TP_BENCH_VECTORS", 100_000)?,
            queries: var("TP_BENCH_QUERIES", 500)?,
            concurrency: var("TP_BENCH_CONCURRENCY", 8)?,
            window: Duration::from_secs_f64(var("TP_BENCH_SECONDS", 4.0)?),
            rounds: var("TP_BENCH_ROUNDS", 5)?,
            spread: var("TP_BENCH_SPREAD", 0.75)?,
            decay: var("TP_BENCH_DECAY", 1.0)?,
        };
        if opts.vectors < 1000 || opts.queries == 0 || opts.concurrency == 0 || opts.rounds == 0 {
            return Err(
                "TP_BENCH_VECTORS must be at least 1000 and the other knobs positive".into(),
            );
        }
        Ok(opts)
    }
}

const SECTIONS: [&str; 4] = ["vector", "auth", "ratelimit", "tls"];

/// What is missing to run, as instructions.
fn preflight() -> Result<PathBuf, String> {
    let missing: Vec<&str> = [
        "TP_TEST_PG_BIN",
        "TP_TEST_PG_USER",
        "TP_TEST_REDIS_SERVER",
        "TP_TEST_NGINX",
        "TP_TEST_PYTHON",
        "TP_TEST_PGBOUNCER",
        "TP_TEST_PG_TLS_BIN",
    ]
    .into_iter()
    .filter(|v| std::env::var_os(v).is_none())
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} not set. Set up the test services first:\n  \
             bash scripts/test-deps.sh && source .test-env/env.sh\n  \
             export TP_TEST_STATE_DIR=/tmp/tp-bench-state; mkdir -p $TP_TEST_STATE_DIR",
            missing.join(", ")
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("tenant-plane"))
        .ok_or("no target directory")?;
    if !binary.exists() {
        return Err(format!(
            "{} is missing. Build the server with the bench's profile first:\n  \
             cargo build --release -p tp-bin",
            binary.display()
        ));
    }
    Ok(binary)
}

/// Services shared by the sections; dropping it stops them.
#[derive(Default)]
pub struct Services {
    cluster: OnceLock<PgCluster>,
}

impl Services {
    /// The PostgreSQL cluster of this run, started on first use.
    pub fn cluster(&self) -> &PgCluster {
        self.cluster.get_or_init(|| {
            // Later `-c` settings override the harness's defaults: room for
            // the 100k-vector HNSW index, and no checkpoint mid-run.
            let cluster = PgCluster::start_with(
                "bench",
                "-c shared_buffers=1GB -c maintenance_work_mem=512MB \
                 -c max_wal_size=8GB -c checkpoint_timeout=1h",
            );
            println!(
                "PostgreSQL: {}",
                cluster.psql("postgres", "SELECT version()")
            );
            println!(
                "pgvector:   {}",
                cluster.psql(
                    "postgres",
                    "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
                )
            );
            cluster
        })
    }
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs bench targets too (`test = false` does
    // not stop it), without the `--bench` flag that `cargo bench` passes.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "plane bench: not run under `cargo test`; use `cargo bench -p tp-tests --bench plane`"
        );
        return ExitCode::SUCCESS;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .chain(std::env::var("TP_BENCH_FILTER").ok())
        .collect();
    let selected: Vec<&str> = SECTIONS
        .into_iter()
        .filter(|s| args.is_empty() || args.iter().any(|a| s.contains(a.as_str())))
        .collect();
    if selected.is_empty() {
        eprintln!(
            "no section matches {args:?}; sections: {}",
            SECTIONS.join(", ")
        );
        return ExitCode::from(2);
    }
    let binary = match preflight() {
        Ok(binary) => binary,
        Err(e) => {
            eprintln!("plane bench: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = match Opts::from_env() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("plane bench: {e}");
            return ExitCode::from(2);
        }
    };
    report::machine(&binary, &opts);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let mut summary = Summary::default();
    let services = Services::default();
    runtime.block_on(async {
        for section in &selected {
            let at = Instant::now();
            report::heading(section);
            match *section {
                "vector" => vector::run(&opts, &services, &mut summary).await,
                "auth" => auth::run_auth(&opts, &services, &mut summary).await,
                "ratelimit" => auth::run_ratelimit(&opts, &services, &mut summary).await,
                "tls" => tls::run(&opts, &services, &mut summary).await,
                _ => unreachable!("unknown section"),
            }
            println!(
                "\n[{section}] done in {:.0} s; load average now {}",
                at.elapsed().as_secs_f64(),
                report::loadavg()
            );
        }
    });
    drop(runtime);
    drop(services);
    summary.print();
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
