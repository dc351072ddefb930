//! What TLS to the data services costs: two replicas that differ only in
//! whether they reach PostgreSQL (through PgBouncer in session mode, the
//! pgvector build has no TLS) and Redis over TLS.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use tp_tests::Client;
use tp_tests::RedisServer;
use tp_tests::data::Clustered;
use tp_tests::pgbouncer::{PgBouncer, PoolMode};
use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::tls::TestPki;

use crate::load::{self, Bounds, Proc, Target};
use crate::report::{Summary, Target as Goal};
use crate::{Opts, Services};

const DIM: usize = 128;
const DOCUMENTS: usize = 5000;

fn search_body(query: &[f32]) -> Bytes {
    let mut s = String::from("{\"vector\":[");
    for (i, x) in query.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{x}");
    }
    s.push_str("],\"k\":10}");
    Bytes::from(s)
}

/// Plaintext vs TLS to PostgreSQL (via PgBouncer) and Redis, same rounds.
pub async fn run(opts: &Opts, services: &Services, summary: &mut Summary) {
    let cluster = tokio::task::block_in_place(|| services.cluster());
    let direct = tokio::task::block_in_place(|| cluster.create_database("bench_tls"));
    let db = tp_tests::postgres::database_of(&direct).to_owned();
    let (pki, plain_pool, tls_pool, redis) = tokio::task::block_in_place(|| {
        let pki = TestPki::for_services();
        let size = u32::try_from(opts.concurrency).unwrap_or(8) + 4;
        let plain = PgBouncer::start(cluster.port, PoolMode::Session, size, None);
        let tls = PgBouncer::start(cluster.port, PoolMode::Session, size, Some(&pki));
        let redis = RedisServer::start_tls(&pki, false);
        (pki, plain, tls, redis)
    });
    let base = |url: &str, redis_url: &str| {
        let mut env = prod_env(url);
        set(&mut env, "REDIS_URL", redis_url);
        // A Redis round trip on every request, so the table shows its TLS cost.
        set(&mut env, "TP_RATE_LIMIT_LEASE_MAX", "1");
        set(&mut env, "TP_RATE_LIMIT_PER_MINUTE", "10000000");
        set(&mut env, "TP_RATE_LIMIT_BURST", "1000000");
        set(&mut env, "DB_POOL_MAX", &(opts.concurrency + 2).to_string());
        env
    };
    let plain_env = base(&plain_pool.url(&db), &redis.url());
    let mut tls_env = base(
        &format!(
            "postgresql://postgres@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}",
            tls_pool.port,
            pki.ca.display()
        ),
        &redis.tls_url(),
    );
    set(&mut tls_env, "TP_REDIS_CA_FILE", &pki.ca.to_string_lossy());
    let (plain, tls) =
        tokio::task::block_in_place(|| (Replica::start(&plain_env), Replica::start(&tls_env)));
    let token = plain.admin_token(&plain_env).await;

    let mut data = Clustered::new(7, DIM, 20, 0.75);
    let client = Client::new().with_token(&token);
    let created = client
        .json(
            Method::POST,
            &plain.url("/api/collections"),
            None,
            &json!({"name": "tls", "dimension": DIM, "metric": "cosine"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    for chunk in 0..DOCUMENTS / 500 {
        let documents: Vec<_> = (0..500)
            .map(|i| json!({"id": format!("d{}", chunk * 500 + i), "vector": data.point()}))
            .collect();
        let reply = client
            .json(
                Method::PUT,
                &plain.url("/api/collections/tls/documents"),
                None,
                &json!({ "documents": documents }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    }
    let queries: Vec<Bytes> = (0..200).map(|_| search_body(&data.point())).collect();

    let search = |name: &str, replica: &Replica| Target {
        name: name.into(),
        addr: replica.addr,
        method: Method::POST,
        path: "/api/collections/tls/search".into(),
        authorization: Some(format!("Bearer {token}")),
        bodies: queries.clone(),
        expect: StatusCode::OK,
        processes: vec![("replica", Proc::One(replica.pid()))],
    };
    let me = |name: &str, replica: &Replica| {
        let mut t = Target::get(name, replica.addr, "/api/auth/me", Some(&token), 200);
        t.processes = vec![("replica", Proc::One(replica.pid()))];
        t
    };
    let targets = [
        search("search, PostgreSQL in plaintext", &plain),
        search("search, PostgreSQL over TLS (verify-full)", &tls),
        me("GET /api/auth/me, Redis in plaintext", &plain),
        me("GET /api/auth/me, Redis over TLS", &tls),
    ]
    .map(Arc::new);
    println!(
        "{DOCUMENTS} × {DIM} documents; both replicas reach PostgreSQL through a PgBouncer \
         in session mode (one plaintext, one with client TLS) and one Redis (its plaintext \
         and its TLS port), a Redis round trip per request; {} connections, {} rounds \
         interleaved, each ≤ {:?}",
        opts.concurrency, opts.rounds, opts.window
    );
    let bounds = Bounds {
        concurrency: opts.concurrency,
        requests: 1_000_000,
        time: opts.window,
    };
    let out = load::interleaved(&targets, bounds, opts.rounds).await;
    println!();
    for (t, o) in targets.iter().zip(&out) {
        println!("{}", o.line(&t.name));
    }
    let [plain_search, tls_search, plain_me, tls_me] = &out[..] else {
        unreachable!("four targets")
    };
    let rate = load::Outcome::brief;
    summary.add(
        "tls",
        "search: PostgreSQL over TLS (verify-full, via PgBouncer) / plaintext",
        rate(tls_search),
        rate(plain_search),
        load::paired_ratio(tls_search, plain_search),
        Goal::Info,
    );
    summary.add(
        "tls",
        "GET /api/auth/me, a Redis round trip each: Redis over TLS / plaintext",
        rate(tls_me),
        rate(plain_me),
        load::paired_ratio(tls_me, plain_me),
        Goal::Info,
    );
    drop((plain, tls, plain_pool, tls_pool, redis));
}
