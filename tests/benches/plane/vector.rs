//! Vector search: the HTTP API against the same SQL on the same database,
//! HNSW recall@10 against brute force, and the embedded exact scan against
//! the machine's memory read bandwidth.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::{Method, StatusCode};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use tp_core::vector::{
    DEFAULT_EF_SEARCH, HNSW_EF_CONSTRUCTION, HNSW_M, Metric, NewCollection, NewDocument,
    SearchRequest,
};
use tp_core::{Config, TenantPlane};
use tp_tests::Client;
use tp_tests::replica::{ENCRYPTION_KEY, JWT_SECRET, Replica, prod_env, set};

use crate::data::{Embeddings, exact_top_k};
use crate::load::{self, Bounds, Outcome, Proc, Target};
use crate::report::{Summary, Target as Goal, ms};
use crate::{Opts, Services};

const DIM: usize = 384;
const K: usize = 10;
const CLUSTERS: usize = 100;
const SEED: u64 = 20_251_101;
/// Documents per upsert request (the API's maximum is 1000).
const BATCH: usize = 500;
/// Concurrent search clients, for the API and for SQL alike.
const SEARCH_CONCURRENCY: usize = 4;

/// The data set: row-major unit vectors, their topics, and query vectors.
struct DataSet {
    vectors: Vec<f32>,
    topics: Vec<usize>,
    queries: Vec<Vec<f32>>,
    /// Exact top-`K` rows per query.
    truth: Vec<Vec<usize>>,
}

impl DataSet {
    fn len(&self) -> usize {
        self.topics.len()
    }

    fn vector(&self, row: usize) -> &[f32] {
        &self.vectors[row * DIM..(row + 1) * DIM]
    }
}

pub async fn run(opts: &Opts, services: &Services, summary: &mut Summary) {
    let data = generate(opts);
    let postgres = postgres(opts, services, &data, summary).await;
    drop(postgres);
    embedded(opts, &data, summary).await;
}

fn generate(opts: &Opts) -> DataSet {
    let started = Instant::now();
    let mut generator = Embeddings::new(SEED, DIM, CLUSTERS, opts.spread, opts.decay);
    let mut vectors = Vec::with_capacity(opts.vectors * DIM);
    let mut topics = Vec::with_capacity(opts.vectors);
    for _ in 0..opts.vectors {
        let (v, topic) = generator.point();
        vectors.extend_from_slice(&v);
        topics.push(topic);
    }
    let queries: Vec<Vec<f32>> = (0..opts.queries).map(|_| generator.point().0).collect();
    println!(
        "data: {} × {DIM} unit vectors (f32), {CLUSTERS} topics, spread {}, noise decay {} \
         (≈ {:.0} effective dimensions inside a topic), {} queries from the same distribution; \
         generated in {:.1} s",
        opts.vectors,
        opts.spread,
        opts.decay,
        generator.effective_dimensions(),
        opts.queries,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let truth = exact_top_k(&vectors, DIM, &queries, K);
    println!(
        "exact top-{K} by brute force in Rust: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let data = DataSet {
        vectors,
        topics,
        queries,
        truth,
    };
    // Mean cosine of pairs in one topic and across topics (a sample).
    let (mut same, mut other) = ((0.0f64, 0usize), (0.0f64, 0usize));
    for a in 0..2000.min(data.len()) {
        for b in a + 1..(a + 40).min(data.len()) {
            let cos = f64::from(crate::data::dot(data.vector(a), data.vector(b)));
            let bucket = if data.topics[a] == data.topics[b] {
                &mut same
            } else {
                &mut other
            };
            bucket.0 += cos;
            bucket.1 += 1;
        }
    }
    let nearest: f64 = data
        .queries
        .iter()
        .zip(&data.truth)
        .map(|(q, t)| f64::from(crate::data::dot(q, data.vector(t[0]))))
        .sum::<f64>()
        / data.queries.len() as f64;
    let tenth: f64 = data
        .queries
        .iter()
        .zip(&data.truth)
        .map(|(q, t)| f64::from(crate::data::dot(q, data.vector(t[K - 1]))))
        .sum::<f64>()
        / data.queries.len() as f64;
    println!(
        "mean cosine: query to its 1st neighbour {nearest:.3}, to its 10th {tenth:.3}; \
         pairs in one topic {:.3}, across topics {:.3}",
        same.0 / same.1.max(1) as f64,
        other.0 / other.1.max(1) as f64
    );
    data
}

/// What the PostgreSQL part keeps alive until it is done.
struct Postgres {
    _replicas: [Replica; 2],
}

async fn postgres(
    opts: &Opts,
    services: &Services,
    data: &DataSet,
    summary: &mut Summary,
) -> Postgres {
    let cluster = tokio::task::block_in_place(|| services.cluster());
    let url = tokio::task::block_in_place(|| cluster.create_database("bench_vector"));
    let mut env = prod_env(&url);
    // The search path without a limiter (measured separately).
    set(&mut env, "TP_RATE_LIMIT_DISABLED", "true");
    let replica = tokio::task::block_in_place(|| Replica::start(&env));
    let token = replica.admin_token(&env).await;
    let client = Client::new()
        .with_token(&token)
        .with_timeout(Duration::from_secs(300));
    let reply = client
        .json(
            Method::POST,
            &replica.url("/api/collections"),
            None,
            &serde_json::json!({"name": "bench", "dimension": DIM, "metric": "cosine"}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "create collection: {:?}",
        reply.json()
    );

    upload(&client, &replica, data).await;
    let collection_id = tokio::task::block_in_place(|| {
        // Vacuumed and checkpointed now, so that no autovacuum of the
        // fresh 100k rows or checkpoint lands inside a measured round.
        cluster.psql("bench_vector", "VACUUM (ANALYZE) documents");
        cluster.psql("bench_vector", "CHECKPOINT");
        cluster.psql(
            "bench_vector",
            "SELECT id FROM collections WHERE name = 'bench'",
        )
    });
    let sql = format!(
        "SELECT id, (embedding::vector({DIM}) <=> $1) AS distance, content, metadata, \
         NULL::vector AS embedding FROM documents WHERE collection_id = '{collection_id}' \
         ORDER BY embedding::vector({DIM}) <=> $1 LIMIT {K}"
    );
    tokio::task::block_in_place(|| {
        let sizes = cluster.psql(
            "bench_vector",
            &format!(
                "SELECT pg_size_pretty(pg_relation_size('documents')) || ' table, ' || \
                 pg_size_pretty(pg_relation_size('documents_hnsw_{collection_id}')) || ' HNSW index'"
            ),
        );
        println!("PostgreSQL: {sizes}");
        let literal = format!(
            "'[{}]'::vector",
            data.queries[0]
                .iter()
                .map(f32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let plan = cluster.psql(
            "bench_vector",
            &format!("EXPLAIN {}", sql.replace("$1", &literal)),
        );
        let uses_index = plan.contains(&format!("documents_hnsw_{collection_id}"));
        println!(
            "plan of the server's search statement: {}",
            if uses_index {
                "HNSW index scan"
            } else {
                "NOT the HNSW index"
            }
        );
        assert!(
            uses_index,
            "the search does not use the HNSW index:\n{plan}"
        );
    });

    recall(&client, &replica, data, summary).await;
    set(&mut env, "TP_WORKER_THREADS", "1");
    let one_thread = tokio::task::block_in_place(|| Replica::start(&env));
    let postmaster = cluster.postmaster_pid();
    latency(
        opts,
        [&replica, &one_thread],
        postmaster,
        &token,
        &url,
        &sql,
        data,
        summary,
    )
    .await;
    Postgres {
        _replicas: [replica, one_thread],
    }
}

/// Upserts every document through the API, two requests in flight.
async fn upload(client: &Client, replica: &Replica, data: &DataSet) {
    let started = Instant::now();
    let batches = data.len().div_ceil(BATCH);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let url = replica.url("/api/collections/bench/documents");
    let bodies: Vec<Bytes> = (0..batches).map(|b| batch_body(data, b)).collect();
    let bodies = Arc::new(bodies);
    let uploaders: Vec<_> = (0..2)
        .map(|_| {
            let (client, url, next, done, bodies) = (
                client.clone(),
                url.clone(),
                next.clone(),
                done.clone(),
                bodies.clone(),
            );
            let total = data.len() as u64;
            tokio::spawn(async move {
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(b) else { break };
                    let reply = client
                        .send(
                            Method::PUT,
                            &url,
                            &[("content-type", "application/json")],
                            Some(body.clone()),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("upsert batch {b}: {e}"));
                    assert_eq!(
                        reply.status,
                        StatusCode::OK,
                        "upsert batch {b}: {}",
                        String::from_utf8_lossy(&reply.body)
                    );
                    let n = reply.json()["upserted"].as_u64().unwrap_or(0);
                    let before = done.fetch_add(n, Ordering::Relaxed);
                    if (before + n) * 10 / total > before * 10 / total {
                        println!(
                            "  upserted {:>7} / {total} documents ({:.0} s)",
                            before + n,
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            })
        })
        .collect();
    for u in uploaders {
        u.await.expect("uploader");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "loaded {} documents through PUT …/documents ({BATCH} per request, 2 in flight) \
         in {secs:.0} s: {:.0} documents/s (HNSW maintained on insert)",
        data.len(),
        data.len() as f64 / secs
    );
}

fn batch_body(data: &DataSet, batch: usize) -> Bytes {
    let rows = batch * BATCH..((batch + 1) * BATCH).min(data.len());
    let mut s = String::with_capacity(rows.len() * DIM * 12);
    s.push_str("{\"documents\":[");
    for (n, row) in rows.enumerate() {
        if n > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"id\":\"d{row}\",\"content\":\"document {row}\",\"metadata\":{{\"topic\":{}}},\"vector\":[",
            data.topics[row]
        );
        for (i, x) in data.vector(row).iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{x}");
        }
        s.push_str("]}");
    }
    s.push_str("]}");
    Bytes::from(s)
}

fn search_body(query: &[f32], extra: &str) -> Bytes {
    let mut s = String::with_capacity(DIM * 12 + 64);
    s.push_str("{\"vector\":[");
    for (i, x) in query.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{x}");
    }
    let _ = write!(s, "],\"k\":{K}{extra}}}");
    Bytes::from(s)
}

/// Row numbers of an API search's hits.
fn hit_rows(reply: &serde_json::Value) -> Vec<usize> {
    reply["results"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .filter_map(|h| h["id"].as_str()?.strip_prefix('d')?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn overlap(found: &[usize], truth: &[usize]) -> usize {
    let truth: HashSet<usize> = truth.iter().copied().collect();
    found.iter().filter(|r| truth.contains(r)).count()
}

/// recall@10 through the API at the default `ef_search` and a few larger ones.
async fn recall(client: &Client, replica: &Replica, data: &DataSet, summary: &mut Summary) {
    let url = replica.url("/api/collections/bench/search");
    // Sanity: pgvector's exact scan agrees with the bench's brute force.
    let checks = data.queries.len().min(10);
    let mut agree = 0;
    for (q, truth) in data.queries.iter().zip(&data.truth).take(checks) {
        let body = search_body(q, ",\"include\":[],\"exact\":true");
        let reply = client
            .send(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                Some(body),
            )
            .await
            .expect("exact search");
        agree += overlap(&hit_rows(&reply.json()), truth);
    }
    println!(
        "pgvector exact search (\"exact\": true) vs brute force on {checks} queries: {:.3}",
        agree as f64 / (checks * K) as f64
    );
    let mut default_recall = 0.0;
    for ef in [None, Some(80), Some(200)] {
        let extra = ef.map_or_else(String::new, |ef| format!(",\"ef_search\":{ef}"));
        let mut found = 0;
        let started = Instant::now();
        for (q, truth) in data.queries.iter().zip(&data.truth) {
            let body = search_body(q, &format!(",\"include\":[]{extra}"));
            let reply = client
                .send(
                    Method::POST,
                    &url,
                    &[("content-type", "application/json")],
                    Some(body),
                )
                .await
                .expect("search");
            assert_eq!(reply.status, StatusCode::OK, "search: {:?}", reply.json());
            found += overlap(&hit_rows(&reply.json()), truth);
        }
        let recall = found as f64 / (data.queries.len() * K) as f64;
        println!(
            "HNSW recall@{K} at ef_search {:<11} {recall:.4}  ({} queries, {:.2} ms each, one client)",
            ef.map_or_else(
                || format!("{DEFAULT_EF_SEARCH} (default)"),
                |e| e.to_string()
            ),
            data.queries.len(),
            started.elapsed().as_secs_f64() * 1e3 / data.queries.len() as f64
        );
        if ef.is_none() {
            default_recall = recall;
        }
    }
    summary.add(
        "vector",
        format!(
            "HNSW recall@{K}, ef_search {DEFAULT_EF_SEARCH} (m {HNSW_M}, ef_construction {HNSW_EF_CONSTRUCTION}), {} docs",
            data.len()
        ),
        format!("{default_recall:.4}"),
        "exact 1.0",
        default_recall,
        Goal::AtLeast(0.95),
    );
}

/// pgvector's binary `vector`: dimension, a reserved u16, then big-endian f32s.
#[derive(Debug)]
struct PgVector<'a>(&'a [f32]);

impl ToSql for PgVector<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u16(u16::try_from(self.0.len())?);
        out.put_u16(0);
        for x in self.0 {
            out.put_f32(*x);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "vector"
    }

    to_sql_checked!();
}

/// Any column, received and ignored (jsonb, vector).
struct Received;

impl<'a> FromSql<'a> for Received {
    fn from_sql(
        _ty: &Type,
        _raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Received)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// A connection set up like the server's pooled ones, with the search prepared.
struct SqlClient {
    client: tokio_postgres::Client,
    statement: tokio_postgres::Statement,
}

async fn sql_clients(url: &str, sql: &str, n: usize) -> Vec<Arc<SqlClient>> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        // The session settings of tp-core's PgConnector.
        client
            .batch_execute(
                "SET statement_timeout = 30000; SET idle_in_transaction_session_timeout = 30000; \
                 SET hnsw.iterative_scan = relaxed_order;",
            )
            .await
            .expect("session settings");
        let statement = client.prepare(sql).await.expect("prepare search");
        clients.push(Arc::new(SqlClient { client, statement }));
    }
    clients
}

/// The search statement as raw SQL: `concurrency` connections, back to back.
async fn sql_load(
    clients: &[Arc<SqlClient>],
    queries: &Arc<Vec<Vec<f32>>>,
    bounds: Bounds,
    processes: &[(&'static str, Proc)],
) -> Outcome {
    let claimed = Arc::new(AtomicU64::new(0));
    let cpu = load::busy_cpu();
    let meter = load::CpuMeter::start(processes);
    let started = Instant::now();
    let deadline = started + bounds.time;
    let workers: Vec<_> = clients
        .iter()
        .take(bounds.concurrency)
        .enumerate()
        .map(|(w, c)| {
            let (c, claimed, queries) = (c.clone(), claimed.clone(), queries.clone());
            tokio::spawn(async move {
                let mut out = Outcome::default();
                let mut i = w;
                while Instant::now() < deadline
                    && claimed.fetch_add(1, Ordering::Relaxed) < bounds.requests
                {
                    let q = &queries[i % queries.len()];
                    i += 1;
                    let sent = Instant::now();
                    match c.client.query(&c.statement, &[&PgVector(q)]).await {
                        Ok(rows) => {
                            for row in &rows {
                                let _: &str = row.get(0);
                                let _: f64 = row.get(1);
                                let _: Option<&str> = row.get(2);
                                let _: Option<Received> = row.get(3);
                                let _: Option<Received> = row.get(4);
                            }
                            let us = sent.elapsed().as_micros();
                            out.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.example.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                out
            })
        })
        .collect();
    let mut total = Outcome::default();
    for w in workers {
        total.merge(w.await.expect("sql worker"));
    }
    total.elapsed = started.elapsed();
    total.cpu = load::busy_cpu().saturating_sub(cpu);
    total.process_usage = meter.stop();
    total
}

/// API search vs the same statement as raw SQL, interleaved round by round.
///
/// Two replicas serve the same database: one with the default worker
/// threads (one per CPU) and one with `TP_WORKER_THREADS=1`, to show what
/// fewer threads change when the replica shares its cores with PostgreSQL.
#[allow(clippy::too_many_arguments)]
async fn latency(
    opts: &Opts,
    replicas: [&Replica; 2],
    postmaster: u32,
    token: &str,
    url: &str,
    sql: &str,
    data: &DataSet,
    summary: &mut Summary,
) {
    let queries = Arc::new(data.queries.clone());
    let target = |replica: &Replica| {
        Arc::new(Target {
            name: "API POST …/search".into(),
            addr: replica.addr,
            method: Method::POST,
            path: "/api/collections/bench/search".into(),
            authorization: Some(format!("Bearer {token}")),
            // The default include (content and metadata), as the SQL selects.
            bodies: data.queries.iter().map(|q| search_body(q, "")).collect(),
            expect: StatusCode::OK,
            processes: vec![
                ("replica", Proc::One(replica.pid())),
                ("postgres", Proc::Tree(postmaster)),
                ("client", Proc::Client),
            ],
        })
    };
    let (default_threads, one_thread) = (target(replicas[0]), target(replicas[1]));
    let clients = sql_clients(url, sql, SEARCH_CONCURRENCY).await;
    let sql_meters = [
        ("postgres", Proc::Tree(postmaster)),
        ("client", Proc::Client),
    ];
    println!(
        "\nsearch latency, k={K}, default include (content, metadata): API through a replica vs \
         the server's statement on tokio-postgres connections with the server's session \
         settings; {} rounds, interleaved, each ≤ {:?}",
        opts.rounds, opts.window
    );
    for concurrency in [1, SEARCH_CONCURRENCY] {
        let bounds = Bounds {
            concurrency,
            requests: 20_000,
            time: opts.window,
        };
        let warm = Bounds {
            requests: 100,
            time: Duration::from_secs(1),
            ..bounds
        };
        let mut api = Outcome::default();
        let mut api_one = Outcome::default();
        let mut sql_out = Outcome::default();
        for _ in 0..opts.rounds {
            load::run(&default_threads, warm).await;
            api.merge(load::run(&default_threads, bounds).await);
            load::run(&one_thread, warm).await;
            api_one.merge(load::run(&one_thread, bounds).await);
            sql_load(&clients, &queries, warm, &[]).await;
            sql_out.merge(sql_load(&clients, &queries, bounds, &sql_meters).await);
        }
        let (api, api_one, sql_out) = (api.sorted(), api_one.sorted(), sql_out.sorted());
        println!(" {concurrency} client(s):");
        println!("{}", api.line("API, default worker threads"));
        println!("{}", api_one.line("API, TP_WORKER_THREADS=1"));
        println!("{}", sql_out.line("raw SQL, prepared once"));
        let baseline = format!(
            "{} (p99 {}, {:.0} QPS)",
            ms(sql_out.p50()),
            ms(sql_out.p99()),
            sql_out.rate()
        );
        for (variant, outcome, goal) in [
            (
                "default worker threads",
                &api,
                concurrency == SEARCH_CONCURRENCY,
            ),
            ("TP_WORKER_THREADS=1", &api_one, false),
        ] {
            summary.add(
                "vector",
                format!("search p50, {concurrency} client(s), {variant}: API / raw SQL"),
                format!(
                    "{} (p99 {}, {:.0} QPS)",
                    ms(outcome.p50()),
                    ms(outcome.p99()),
                    outcome.rate()
                ),
                baseline.clone(),
                outcome.p50().as_secs_f64() / sql_out.p50().as_secs_f64().max(1e-9),
                if goal { Goal::AtMost(1.2) } else { Goal::Info },
            );
        }
    }
}

/// The embedded backend's exact scan, in process through `tp-core`, against
/// the memory read bandwidth of one core.
async fn embedded(opts: &Opts, data: &DataSet, summary: &mut Summary) {
    let dir = tp_tests::temp_dir("bench-embedded");
    let url = format!("sqlite://{}", dir.join("tp.db").display());
    let env: BTreeMap<String, String> = [
        ("TENANT_ID", "acme-corp"),
        ("JWT_SECRET", JWT_SECRET),
        ("ENCRYPTION_KEY", ENCRYPTION_KEY),
        ("TENANT_PLANE_DATABASE_URL", url.as_str()),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let config = Config::from_env(&env).expect("embedded config");
    let (plane, _) = TenantPlane::start(config).await.expect("embedded plane");
    let vectors = plane.vectors();
    vectors
        .create_collection(NewCollection {
            name: "bench".into(),
            dimension: DIM as i64,
            metric: Metric::Cosine,
        })
        .await
        .expect("create embedded collection");
    let started = Instant::now();
    for batch in 0..data.len().div_ceil(1000) {
        let docs = (batch * 1000..((batch + 1) * 1000).min(data.len()))
            .map(|row| NewDocument {
                id: format!("d{row}"),
                vector: data.vector(row).to_vec(),
                content: None,
                metadata: None,
            })
            .collect();
        vectors
            .upsert("bench", docs)
            .await
            .expect("embedded upsert");
    }
    println!(
        "\nembedded (SQLite + in-memory exact index, in process through tp-core): loaded {} \
         documents in {:.1} s",
        data.len(),
        started.elapsed().as_secs_f64()
    );
    let scan_bytes = (data.len() * DIM * 4) as f64;
    let request = |q: &[f32]| SearchRequest {
        vector: q.to_vec(),
        k: K as u32,
        filter: None,
        include: vec![],
        ef_search: None,
        exact: false,
    };
    // One warm-up, then bounded by count and time.
    vectors
        .search("bench", request(&data.queries[0]))
        .await
        .expect("search");
    let mut times = Vec::new();
    let mut found = 0;
    let deadline = Instant::now() + opts.window * 3;
    for (q, truth) in data.queries.iter().zip(&data.truth).take(60) {
        if Instant::now() > deadline {
            break;
        }
        let t = Instant::now();
        let hits = vectors.search("bench", request(q)).await.expect("search");
        times.push(t.elapsed());
        let rows: Vec<usize> = hits
            .iter()
            .filter_map(|h| h.id.strip_prefix('d')?.parse().ok())
            .collect();
        found += overlap(&rows, truth);
    }
    times.sort();
    let median = times[times.len() / 2];
    let scan = scan_bytes / median.as_secs_f64() / 1e9;
    println!(
        "exact scan of {:.1} MB: median {} over {} searches (min {}, max {}), recall {:.3}: {scan:.2} GB/s",
        scan_bytes / 1e6,
        ms(median),
        times.len(),
        ms(times[0]),
        ms(times[times.len() - 1]),
        found as f64 / (times.len() * K) as f64
    );
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
    let memory = tokio::task::block_in_place(memory_read_bandwidth);
    summary.add(
        "vector",
        format!(
            "embedded exact scan, {} × {DIM}: GB/s vs one core's memory read",
            data.len()
        ),
        format!("{scan:.2} GB/s ({} per search)", ms(median)),
        format!("{memory:.2} GB/s"),
        scan / memory,
        Goal::AtLeast(0.5),
    );
}

/// One core summing a 512 MiB `f32` buffer (far beyond any cache): the
/// median GB/s of several passes.
fn memory_read_bandwidth() -> f64 {
    const FLOATS: usize = 128 << 20;
    let buffer: Vec<f32> = (0..FLOATS).map(|i| (i % 1024) as f32 * 1e-3).collect();
    let mut rates = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let sum = sum(std::hint::black_box(&buffer));
        std::hint::black_box(sum);
        rates.push((FLOATS * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "memory read bandwidth, one core summing {} MiB of f32 (16 accumulators): median {:.2} GB/s \
         (min {:.2}, max {:.2}, {} passes)",
        (FLOATS * 4) >> 20,
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1],
        rates.len()
    );
    rates[rates.len() / 2]
}

fn sum(v: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for x in chunks {
        for i in 0..LANES {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
