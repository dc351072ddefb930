//! The PostgreSQL backend: migrations under a lock, outages, recovery.

use std::time::{Duration, Instant};

use tp_tests::postgres::{PgCluster, fresh_database};
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
    let db = url.rsplit('/').next().unwrap();
    let shared = tp_tests::postgres::shared();
    assert_eq!(
        shared.psql(db, "SELECT count(*) FROM __diesel_schema_migrations"),
        "1"
    );
    assert_eq!(
        shared.psql(db, "SELECT value FROM plane_info WHERE key = 'tenant_id'"),
        "acme-corp"
    );
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
