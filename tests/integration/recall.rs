//! pgvector HNSW recall@10 against exact search on clustered data.

use std::collections::HashSet;

use tp_core::vector::{
    DEFAULT_EF_SEARCH, HNSW_EF_CONSTRUCTION, HNSW_M, Metric, NewCollection, NewDocument,
    SearchRequest,
};
use tp_tests::data::Clustered;

use crate::conformance::plane_with;

const DIM: usize = 96;
const DOCS: usize = 10_000;
const QUERIES: usize = 100;
/// Asserted floor; the measured value is printed.
const RECALL_FLOOR: f64 = 0.90;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hnsw_recall_at_10_on_clustered_data() {
    let url = tokio::task::spawn_blocking(tp_tests::postgres::fresh_database)
        .await
        .expect("create database");
    let plane = plane_with(&url, &[]).await;
    let v = plane.vectors();
    v.create_collection(NewCollection {
        name: "recall".into(),
        dimension: DIM as i64,
        metric: Metric::Cosine,
    })
    .await
    .unwrap();
    // The index is built with the documented parameters.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT array_to_string(i.reloptions, ',') FROM collections c \
             JOIN pg_class i ON i.relname = 'documents_hnsw_' || c.id \
             WHERE c.name = 'recall'",
            &[],
        )
        .await
        .expect("the collection's HNSW index");
    assert_eq!(
        row.get::<_, String>(0),
        format!("m={HNSW_M},ef_construction={HNSW_EF_CONSTRUCTION}")
    );
    let mut data = Clustered::new(42, DIM, 64, 0.6);
    let docs: Vec<NewDocument> = (0..DOCS)
        .map(|i| NewDocument {
            id: format!("d{i}"),
            vector: data.point(),
            content: None,
            metadata: None,
        })
        .collect();
    for chunk in docs.chunks(1000) {
        v.upsert("recall", chunk.to_vec()).await.unwrap();
    }
    let request = |vector: Vec<f32>, exact: bool| SearchRequest {
        vector,
        k: 10,
        filter: None,
        include: vec![],
        ef_search: None,
        exact,
    };
    let mut found = 0;
    for _ in 0..QUERIES {
        let q = data.point();
        let approx: HashSet<String> = v
            .search("recall", request(q.clone(), false))
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        let exact: Vec<String> = v
            .search("recall", request(q, true))
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(exact.len(), 10);
        found += exact.iter().filter(|id| approx.contains(*id)).count();
    }
    let recall = found as f64 / (QUERIES * 10) as f64;
    println!(
        "pgvector HNSW recall@10 at ef_search {DEFAULT_EF_SEARCH} on {DOCS} × {DIM} clustered vectors: {recall:.3}"
    );
    assert!(
        recall >= RECALL_FLOOR,
        "recall@10 {recall:.3} below {RECALL_FLOOR}"
    );
}
