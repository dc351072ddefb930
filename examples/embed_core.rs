//! Tenant Plane inside another Rust program, with no HTTP at all: an
//! embedded SQLite plane, a collection, documents and a filtered search.
//!
//! Run with `cargo run -p tp-examples --example embed_core`.

use std::collections::BTreeMap;
use std::error::Error;

use serde_json::json;
use tp_core::vector::{Metric, NewCollection, NewDocument, SearchRequest};
use tp_core::{Config, TenantPlane};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("tp-embed-core-{}", std::process::id()));
    let url = format!("sqlite://{}", dir.join("tp.db").display());
    // Configuration comes from any map: here, literals instead of the process environment.
    let env: BTreeMap<&str, &str> = BTreeMap::from([
        ("TENANT_ID", "example"),
        ("JWT_SECRET", "an-example-secret-that-is-at-least-32-bytes"),
        (
            "ENCRYPTION_KEY",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ),
        ("TENANT_PLANE_DATABASE_URL", url.as_str()),
    ]);
    let (plane, _schema) = TenantPlane::start(Config::from_env(&env)?).await?;

    let vectors = plane.vectors();
    vectors
        .create_collection(NewCollection {
            name: "notes".into(),
            dimension: 3,
            metric: Metric::Cosine,
        })
        .await?;
    let doc = |id: &str, vector: [f32; 3], topic: &str| NewDocument {
        id: id.into(),
        vector: vector.to_vec(),
        content: Some(format!("a note about {topic}")),
        metadata: Some(json!({ "topic": topic })),
    };
    vectors
        .upsert(
            "notes",
            vec![
                doc("a", [1.0, 0.0, 0.0], "rust"),
                doc("b", [0.9, 0.1, 0.0], "databases"),
                doc("c", [0.0, 1.0, 0.0], "rust"),
            ],
        )
        .await?;
    let hits = vectors
        .search(
            "notes",
            SearchRequest {
                vector: vec![1.0, 0.05, 0.0],
                k: 2,
                filter: Some(json!({ "topic": "rust" })),
                include: vec!["content".into()],
                ef_search: None,
                exact: false,
            },
        )
        .await?;
    for hit in &hits {
        println!(
            "{} score={:.3} {}",
            hit.id,
            hit.score,
            hit.content.as_deref().unwrap_or("")
        );
    }
    assert_eq!(hits.first().map(|h| h.id.as_str()), Some("a"));

    let health = plane.health().report().await;
    println!("health: {}", serde_json::to_string(&health)?);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
