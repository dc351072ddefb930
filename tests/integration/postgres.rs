//! The PostgreSQL backend: migrations under a lock, outages, recovery.

use std::time::{Duration, Instant};

use tp_tests::postgres::{PgCluster, database_of, fresh_database};
use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::{Client, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let url = fresh_database();
    let env = prod_env(&url);
    let replicas: Vec<Replica> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(|| Replica::start(&env))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let client = Client::new();
    for replica in &replicas {
        let reply = client.get(&replica.url("/api/health"), None).await;
        assert_eq!(reply.status, 200, "{}", replica.logs());
        let health = reply.json();
        assert_eq!(health["vector_db"], "pgvector");
        assert_eq!(health["db"]["reachable"], true);
    }
    let db = database_of(&url);
    let shared = tp_tests::postgres::shared();
    // Each migration applied exactly once, though three replicas raced.
    let migrations = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tp-core/migrations/postgres"),
    )
    .unwrap()
    .count();
    assert_eq!(
        shared.psql(db, "SELECT count(*) FROM __diesel_schema_migrations"),
        migrations.to_string()
    );
    assert_eq!(
        shared.psql(
            db,
            "SELECT count(DISTINCT version) FROM __diesel_schema_migrations"
        ),
        migrations.to_string()
    );
    assert_eq!(
        shared.psql(db, "SELECT value FROM plane_info WHERE key = 'tenant_id'"),
        "acme-corp"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_keeps_its_connections_under_load() {
    let url = fresh_database();
    let mut env = prod_env(&url);
    set(&mut env, "DB_POOL_MAX", "4");
    set(&mut env, "TP_RATE_LIMIT_DISABLED", "true");
    let replica = Replica::start(&env);
    let token = replica.admin_token(&env).await;
    let db = database_of(&url);
    let shared = tp_tests::postgres::shared();
    let backends = || {
        let pids = shared.psql(
            db,
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY pid",
        );
        pids.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    let load = async |requests: usize| {
        let client = Client::new().with_token(&token);
        let url = replica.url("/api/collections");
        let workers = (0..4).map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..requests / 4 {
                    assert_eq!(client.get(&url, None).await.status, 200);
                }
            })
        });
        for worker in workers.collect::<Vec<_>>() {
            worker.await.unwrap();
        }
    };
    load(200).await;
    let before = backends();
    load(800).await;
    let after = backends();
    assert!(!before.is_empty() && before.len() <= 4, "{before:?}");
    assert_eq!(
        before,
        after,
        "connections were replaced under load\n{}",
        replica.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_server_ended_while_idle_are_not_handed_out() {
    let url = fresh_database();
    let mut env = prod_env(&url);
    set(&mut env, "DB_POOL_MIN", "3");
    let replica = Replica::start(&env);
    let client = Client::new().with_token(&replica.admin_token(&env).await);
    // Each call runs a statement (the health probe is cached).
    let list = async || client.get(&replica.url("/api/collections"), None).await;
    for _ in 0..5 {
        assert_eq!(list().await.status, 200, "{}", replica.logs());
    }
    let db = database_of(&url);
    let shared = tp_tests::postgres::shared();
    let ended = shared.psql(
        db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
    assert_ne!(ended, "0", "the replica held no connection");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Every idle connection is dead now; none may fail a request.
    for attempt in 0..5 {
        let reply = list().await;
        assert_eq!(
            reply.status,
            200,
            "request {attempt} after the backends ended: {}\n{}",
            String::from_utf8_lossy(&reply.body),
            replica.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_before_its_database_recovers_by_itself() {
    let cluster = PgCluster::init("late");
    cluster.start_server();
    let url = cluster.create_database("tp");
    cluster.stop();

    let mut env = prod_env(&url);
    set(&mut env, "DB_CONNECT_TIMEOUT", "2000");
    let replica = Replica::start(&env);
    let client = Client::new();
    let started = Instant::now();
    let reply = client.get(&replica.url("/api/health"), None).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["db"]["reachable"], false);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "health must not hang"
    );
    assert_eq!(
        client
            .get(&replica.url("/api/health/live"), None)
            .await
            .status,
        200
    );

    cluster.start_server();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = client.get(&replica.url("/api/health"), None).await;
        if reply.status == 200 {
            assert_eq!(reply.json()["migrations_pending"], false);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {:?}\n{}",
            reply.json(),
            replica.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_another_tenant_is_refused() {
    let url = fresh_database();
    let first = Replica::start(&prod_env(&url));
    drop(first);
    let mut env = prod_env(&url);
    set(&mut env, "TENANT_ID", "other-tenant");
    let failure = match Replica::try_start(&env, &temp_dir("tenant")) {
        Ok(_) => panic!("started on another tenant's database"),
        Err(f) => f,
    };
    assert_eq!(failure.status.code(), Some(69));
    assert!(
        failure.output.contains("belongs to tenant \"acme-corp\""),
        "{}",
        failure.output
    );
}
