//! Vector collections, documents and search: the behaviour both backends share.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tp_core::TenantPlane;
use tp_core::vector::filter::Filter;
use tp_core::vector::{Metric, NewCollection, NewDocument, SearchHit, SearchRequest};

fn new(name: &str, dimension: i64, metric: Metric) -> NewCollection {
    NewCollection {
        name: name.into(),
        dimension,
        metric,
    }
}

fn doc(id: &str, vector: &[f32], metadata: Value) -> NewDocument {
    NewDocument {
        id: id.into(),
        vector: vector.to_vec(),
        content: Some(format!("content of {id}")),
        metadata: Some(metadata),
    }
}

fn query(vector: &[f32], k: u32) -> SearchRequest {
    SearchRequest {
        vector: vector.to_vec(),
        k,
        filter: None,
        include: vec!["content".into(), "metadata".into()],
        ef_search: None,
        exact: false,
    }
}

fn ids(hits: &[SearchHit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

/// A deterministic pseudo-random stream in [-1, 1).
fn noise(seed: u64) -> impl FnMut() -> f32 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

pub async fn collections_lifecycle(plane: &TenantPlane) {
    let v = plane.vectors();
    let created = v
        .create_collection(new("alpha", 4, Metric::Cosine))
        .await
        .unwrap();
    assert_eq!((created.dimension, created.metric), (4, Metric::Cosine));
    v.create_collection(new("beta", 2, Metric::L2))
        .await
        .unwrap();
    let dup = v
        .create_collection(new("alpha", 8, Metric::L2))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), "collection_exists");

    let names: Vec<String> = v
        .list_collections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(
        v.get_collection("alpha").await.unwrap().document_count,
        Some(0)
    );

    for (bad, code) in [
        (new("", 4, Metric::Cosine), "invalid_collection_name"),
        (
            new("has space", 4, Metric::Cosine),
            "invalid_collection_name",
        ),
        (new("-dash", 4, Metric::Cosine), "invalid_collection_name"),
        (
            new(&"x".repeat(65), 4, Metric::Cosine),
            "invalid_collection_name",
        ),
        (new("zero", 0, Metric::Cosine), "invalid_dimension"),
        (new("huge", 2001, Metric::Cosine), "invalid_dimension"),
        (new("negative", -3, Metric::Cosine), "invalid_dimension"),
    ] {
        assert_eq!(v.create_collection(bad).await.unwrap_err().code(), code);
    }

    v.upsert("alpha", vec![doc("a", &[1.0, 0.0, 0.0, 0.0], json!({}))])
        .await
        .unwrap();
    v.delete_collection("alpha").await.unwrap();
    assert_eq!(
        v.get_collection("alpha").await.unwrap_err().code(),
        "collection_not_found"
    );
    assert_eq!(
        v.delete_collection("alpha").await.unwrap_err().code(),
        "collection_not_found"
    );
    assert_eq!(
        v.upsert("alpha", vec![doc("a", &[1.0; 4], json!({}))])
            .await
            .unwrap_err()
            .code(),
        "collection_not_found"
    );
    // Re-creating the name gives a fresh, empty collection.
    v.create_collection(new("alpha", 4, Metric::Cosine))
        .await
        .unwrap();
    assert_eq!(
        v.get_collection("alpha").await.unwrap().document_count,
        Some(0)
    );
    let hits = v
        .search("alpha", query(&[1.0, 0.0, 0.0, 0.0], 5))
        .await
        .unwrap();
    assert!(
        hits.is_empty(),
        "old documents leaked into the new collection: {hits:?}"
    );
}

pub async fn upsert_is_atomic_and_idempotent(plane: &TenantPlane) {
    let v = plane.vectors();
    v.create_collection(new("c", 3, Metric::Cosine))
        .await
        .unwrap();
    let batch: Vec<NewDocument> = (0..50)
        .map(|i| doc(&format!("d{i}"), &[1.0, i as f32, 0.5], json!({"i": i})))
        .collect();
    assert_eq!(v.upsert("c", batch.clone()).await.unwrap(), 50);
    assert_eq!(
        v.upsert("c", batch).await.unwrap(),
        50,
        "same ids again replace"
    );
    assert_eq!(
        v.get_collection("c").await.unwrap().document_count,
        Some(50)
    );

    let replaced = NewDocument {
        id: "d7".into(),
        vector: vec![0.0, 0.0, 1.0],
        content: None,
        metadata: Some(json!({"replaced": true})),
    };
    v.upsert("c", vec![replaced]).await.unwrap();
    let got = v.get_document("c", "d7", true).await.unwrap();
    assert_eq!(got.metadata, json!({"replaced": true}));
    assert_eq!(got.content, None);
    assert_eq!(got.vector, Some(vec![0.0, 0.0, 1.0]));

    assert_eq!(
        v.delete_documents("c", vec!["d1".into(), "d2".into(), "nope".into()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        v.get_collection("c").await.unwrap().document_count,
        Some(48)
    );
    assert_eq!(
        v.get_document("c", "d1", false).await.unwrap_err().code(),
        "document_not_found"
    );
    let hits = v.search("c", query(&[1.0, 1.0, 0.5], 50)).await.unwrap();
    assert_eq!(hits.len(), 48);
    assert!(!ids(&hits).contains(&"d1"));
}

pub async fn invalid_batches_write_nothing(plane: &TenantPlane) {
    let v = plane.vectors();
    v.create_collection(new("c", 3, Metric::Cosine))
        .await
        .unwrap();
    let good = || doc("good", &[1.0, 2.0, 3.0], json!({}));
    let cases: Vec<(Vec<NewDocument>, &str)> = vec![
        (vec![], "empty_batch"),
        (
            vec![good(), doc("short", &[1.0, 2.0], json!({}))],
            "dimension_mismatch",
        ),
        (
            vec![good(), doc("nan", &[1.0, f32::NAN, 3.0], json!({}))],
            "invalid_vector",
        ),
        (
            vec![good(), doc("inf", &[f32::INFINITY, 0.0, 0.0], json!({}))],
            "invalid_vector",
        ),
        (
            vec![good(), doc("zero", &[0.0, 0.0, 0.0], json!({}))],
            "invalid_vector",
        ),
        (vec![good(), good()], "duplicate_id"),
        (
            vec![good(), doc("", &[1.0, 1.0, 1.0], json!({}))],
            "invalid_document_id",
        ),
        (
            vec![good(), doc("bell\u{7}", &[1.0, 1.0, 1.0], json!({}))],
            "invalid_document_id",
        ),
        (
            vec![good(), doc("meta", &[1.0, 1.0, 1.0], json!([1, 2]))],
            "invalid_metadata",
        ),
        (
            vec![
                good(),
                doc("big", &[1.0, 1.0, 1.0], json!({"x": "y".repeat(70_000)})),
            ],
            "metadata_too_large",
        ),
        (
            (0..1001)
                .map(|i| doc(&format!("d{i}"), &[1.0, 1.0, 1.0], json!({})))
                .collect(),
            "batch_too_large",
        ),
    ];
    for (batch, code) in cases {
        let err = v.upsert("c", batch).await.unwrap_err();
        assert_eq!(err.code(), code);
        assert_eq!(err.kind(), tp_core::ErrorKind::InvalidInput);
    }
    assert_eq!(
        v.get_collection("c").await.unwrap().document_count,
        Some(0),
        "nothing written"
    );
    assert!(
        v.search("c", query(&[1.0, 2.0, 3.0], 10))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn scores_follow_the_documented_metric(plane: &TenantPlane) {
    let v = plane.vectors();
    let docs = [
        ("x", [1.0f32, 0.0]),
        ("y", [0.0, 2.0]),
        ("xy", [3.0, 3.0]),
        ("neg", [-1.0, -0.5]),
    ];
    let q = [2.0f32, 1.0];
    for metric in [Metric::Cosine, Metric::L2, Metric::InnerProduct] {
        let name = format!("m-{metric}").replace('_', "-");
        v.create_collection(new(&name, 2, metric)).await.unwrap();
        let batch = docs
            .iter()
            .map(|(id, vec)| doc(id, vec, json!({})))
            .collect();
        v.upsert(&name, batch).await.unwrap();
        let mut request = query(&q, 4);
        request.exact = true;
        let hits = v.search(&name, request).await.unwrap();
        let expected = |d: &[f32; 2]| -> (f64, f64) {
            let dot = f64::from(d[0] * q[0] + d[1] * q[1]);
            let norm = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
            match metric {
                Metric::Cosine => {
                    let cos = dot / (norm(d) * norm(&q));
                    (cos, 1.0 - cos)
                }
                Metric::L2 => {
                    let dist = (f64::from((d[0] - q[0]).powi(2) + (d[1] - q[1]).powi(2))).sqrt();
                    (-dist, dist)
                }
                Metric::InnerProduct => (dot, -dot),
            }
        };
        let mut want: Vec<(&str, f64, f64)> = docs
            .iter()
            .map(|(id, d)| {
                let (score, distance) = expected(d);
                (*id, score, distance)
            })
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(
            ids(&hits),
            want.iter().map(|w| w.0).collect::<Vec<_>>(),
            "{metric}"
        );
        for (hit, (_, score, distance)) in hits.iter().zip(&want) {
            assert!(
                (hit.score - score).abs() < 1e-5,
                "{metric} {}: score {} vs {score}",
                hit.id,
                hit.score
            );
            assert!(
                (hit.distance - distance).abs() < 1e-5,
                "{metric} {}: distance {} vs {distance}",
                hit.id,
                hit.distance
            );
        }
    }
}

/// 60 documents with varied metadata, including missing and null fields.
fn filter_corpus() -> Vec<NewDocument> {
    let cats = ["news", "blog", "docs"];
    let mut rnd = noise(7);
    (0..60)
        .map(|i| {
            let mut meta = serde_json::Map::new();
            meta.insert("cat".into(), json!(cats[i % 3]));
            meta.insert("year".into(), json!(2015 + (i % 10)));
            if i % 4 != 0 {
                meta.insert("score".into(), json!(i as f64 / 10.0));
            }
            if i % 5 == 0 {
                meta.insert("tags".into(), json!(["featured", format!("t{}", i % 3)]));
            }
            if i % 7 == 0 {
                meta.insert("flag".into(), Value::Null);
            }
            meta.insert(
                "nested".into(),
                json!({"lang": if i % 2 == 0 { "en" } else { "de" }}),
            );
            meta.insert("title".into(), json!(format!("doc-{i:02}")));
            let vector: Vec<f32> = (0..8).map(|_| rnd()).collect();
            NewDocument {
                id: format!("f{i}"),
                vector,
                content: None,
                metadata: Some(Value::Object(meta)),
            }
        })
        .collect()
}

pub async fn filters_agree_with_the_reference_evaluator(plane: &TenantPlane) {
    let v = plane.vectors();
    v.create_collection(new("f", 8, Metric::L2)).await.unwrap();
    let corpus = filter_corpus();
    v.upsert("f", corpus.clone()).await.unwrap();
    let filters = [
        json!({"cat": "news"}),
        json!({"year": {"$gte": 2018, "$lt": 2021}}),
        json!({"score": {"$gt": 2.5}}),
        json!({"score": {"$lte": 1}}),
        json!({"title": {"$gte": "doc-30"}}),
        json!({"cat": {"$in": ["blog", "docs"]}}),
        json!({"cat": {"$nin": ["blog"]}}),
        json!({"score": {"$exists": false}}),
        json!({"flag": {"$exists": true}}),
        json!({"flag": null}),
        json!({"tags": {"$contains": "featured"}}),
        json!({"tags": {"$contains": "t1"}}),
        json!({"nested.lang": "de"}),
        json!({"score": {"$ne": 0.5}}),
        json!({"$not": {"score": {"$gt": 3}}}),
        json!({"$or": [{"cat": "news", "year": 2016}, {"tags": {"$contains": "t2"}}]}),
        json!({"$and": [{"cat": {"$ne": "docs"}}, {"$not": {"nested.lang": "en"}}]}),
        json!({"year": 2020.0}),
        json!({"missing": {"$nin": [1]}}),
        json!({"cat": {"$in": []}}),
    ];
    for filter_json in filters {
        let filter = Filter::parse(&filter_json).unwrap();
        let expected: BTreeSet<String> = corpus
            .iter()
            .filter(|d| filter.matches(d.metadata.as_ref().unwrap()))
            .map(|d| d.id.clone())
            .collect();
        let mut request = query(&[0.0; 8], 100);
        request.filter = Some(filter_json.clone());
        request.exact = true;
        let got: BTreeSet<String> = v
            .search("f", request)
            .await
            .unwrap_or_else(|e| panic!("{filter_json}: {e}"))
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(got, expected, "filter {filter_json}");
    }
}

pub async fn filtered_search_still_returns_k(plane: &TenantPlane) {
    let v = plane.vectors();
    v.create_collection(new("sel", 16, Metric::Cosine))
        .await
        .unwrap();
    let mut rnd = noise(11);
    let docs: Vec<NewDocument> = (0..3000)
        .map(|i| NewDocument {
            id: format!("s{i}"),
            vector: (0..16).map(|_| rnd()).collect(),
            content: None,
            metadata: Some(json!({"rare": i % 50 == 0})),
        })
        .collect();
    for chunk in docs.chunks(1000) {
        v.upsert("sel", chunk.to_vec()).await.unwrap();
    }
    // 60 documents match; an HNSW scan that stopped at ef_search (40)
    // candidates would find about one. Iterative scans must keep going.
    let mut request = query(&[0.5; 16], 10);
    request.filter = Some(json!({"rare": true}));
    let hits = v.search("sel", request).await.unwrap();
    assert_eq!(
        hits.len(),
        10,
        "filtered search returned {} of 10",
        hits.len()
    );
    assert!(
        hits.iter()
            .all(|h| h.metadata.as_ref().unwrap()["rare"] == true)
    );
    assert!(
        hits.windows(2).all(|w| w[0].score >= w[1].score),
        "results best first"
    );

    let mut wide = query(&[0.5; 16], 200);
    wide.filter = Some(json!({"rare": false}));
    assert_eq!(
        v.search("sel", wide).await.unwrap().len(),
        200,
        "k above ef_search"
    );
}

pub async fn include_flags_and_documents(plane: &TenantPlane) {
    let v = plane.vectors();
    v.create_collection(new("inc", 2, Metric::InnerProduct))
        .await
        .unwrap();
    v.upsert("inc", vec![doc("a", &[1.0, 2.0], json!({"k": "v"}))])
        .await
        .unwrap();
    let mut request = query(&[1.0, 1.0], 1);
    request.include = vec!["vector".into()];
    let hit = &v.search("inc", request).await.unwrap()[0];
    assert_eq!(hit.vector, Some(vec![1.0, 2.0]));
    assert_eq!(
        (hit.content.as_deref(), hit.metadata.as_ref()),
        (None, None)
    );
    let mut request = query(&[1.0, 1.0], 1);
    request.include = vec!["content".into(), "metadata".into()];
    let hit = &v.search("inc", request).await.unwrap()[0];
    assert_eq!(hit.content.as_deref(), Some("content of a"));
    assert_eq!(hit.metadata, Some(json!({"k": "v"})));
    assert_eq!(hit.vector, None);
    let got = v.get_document("inc", "a", false).await.unwrap();
    assert_eq!(
        (got.content.as_deref(), got.vector),
        (Some("content of a"), None)
    );
}

pub async fn search_input_is_validated(plane: &TenantPlane) {
    let v = plane.vectors();
    v.create_collection(new("val", 3, Metric::Cosine))
        .await
        .unwrap();
    let cases: Vec<(SearchRequest, &str)> = vec![
        (query(&[1.0, 2.0], 1), "dimension_mismatch"),
        (query(&[1.0, f32::NAN, 0.0], 1), "invalid_vector"),
        (query(&[0.0, 0.0, 0.0], 1), "invalid_vector"),
        (query(&[1.0, 1.0, 1.0], 0), "invalid_k"),
        (query(&[1.0, 1.0, 1.0], 1001), "invalid_k"),
        (
            SearchRequest {
                ef_search: Some(0),
                ..query(&[1.0, 1.0, 1.0], 1)
            },
            "invalid_ef_search",
        ),
        (
            SearchRequest {
                include: vec!["secret".into()],
                ..query(&[1.0, 1.0, 1.0], 1)
            },
            "invalid_include",
        ),
        (
            SearchRequest {
                filter: Some(json!({"a": {"$regex": "x"}})),
                ..query(&[1.0, 1.0, 1.0], 1)
            },
            "invalid_filter",
        ),
    ];
    for (request, code) in cases {
        assert_eq!(v.search("val", request).await.unwrap_err().code(), code);
    }
    assert_eq!(
        v.search("nope", query(&[1.0, 1.0, 1.0], 1))
            .await
            .unwrap_err()
            .code(),
        "collection_not_found"
    );
    let ef = SearchRequest {
        ef_search: Some(100),
        ..query(&[1.0, 1.0, 1.0], 1)
    };
    assert!(v.search("val", ef).await.unwrap().is_empty());
}

pub async fn large_values_give_finite_scores_or_a_clear_refusal(plane: &TenantPlane) {
    use tp_core::vector::MAX_COMPONENT;
    let v = plane.vectors();
    for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
        let name = format!("big-{}", metric.as_str().replace('_', "-"));
        v.create_collection(new(&name, 3, metric)).await.unwrap();
        // The largest legal values: every distance is still a finite number.
        let top = MAX_COMPONENT;
        v.upsert(
            &name,
            vec![
                doc("far", &[top, -top, top], json!({})),
                doc("near", &[1.0, 2.0, 3.0], json!({})),
            ],
        )
        .await
        .unwrap();
        for q in [[-top, top, -top], [1.0, 2.0, 3.0]] {
            let hits = v.search(&name, query(&q, 2)).await.unwrap();
            assert_eq!(hits.len(), 2, "{name}");
            for hit in &hits {
                assert!(
                    hit.score.is_finite() && hit.distance.is_finite(),
                    "{name}: {} scored {} at distance {}",
                    hit.id,
                    hit.score,
                    hit.distance
                );
            }
            assert!(hits[0].score >= hits[1].score, "{name}: best first");
        }
        // Beyond the bound, in a document or a query: refused, nothing written.
        let beyond = [1e20_f32, 0.0, 1.0];
        let refused = v
            .upsert(&name, vec![doc("huge", &beyond, json!({}))])
            .await
            .unwrap_err();
        assert_eq!(refused.code(), "invalid_vector", "{name}");
        let refused = v.search(&name, query(&beyond, 2)).await.unwrap_err();
        assert_eq!(refused.code(), "invalid_vector", "{name}");
        assert_eq!(
            v.get_collection(&name).await.unwrap().document_count,
            Some(2)
        );
    }
    // Too close to zero to have a direction: refused for cosine only.
    let tiny = [1e-30_f32, 1e-30, 1e-30];
    let refused = v
        .upsert("big-cosine", vec![doc("tiny", &tiny, json!({}))])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "invalid_vector");
    v.upsert("big-l2", vec![doc("tiny", &tiny, json!({}))])
        .await
        .unwrap();
}

pub async fn nul_characters_and_oversized_filters_are_refused(plane: &TenantPlane) {
    let v = plane.vectors();
    v.create_collection(new("nul", 2, Metric::L2))
        .await
        .unwrap();
    let with = |content: Option<&str>, metadata: Value| NewDocument {
        id: "x".into(),
        vector: vec![1.0, 2.0],
        content: content.map(str::to_owned),
        metadata: Some(metadata),
    };
    for (document, code) in [
        (with(Some("a\0b"), json!({})), "invalid_content"),
        (with(None, json!({"k": "a\0"})), "invalid_metadata"),
        (with(None, json!({"k\0": 1})), "invalid_metadata"),
        (
            with(None, json!({"deep": [{"k": "\0"}]})),
            "invalid_metadata",
        ),
    ] {
        let refused = v.upsert("nul", vec![document]).await.unwrap_err();
        assert_eq!(refused.code(), code);
    }
    assert_eq!(
        v.get_collection("nul").await.unwrap().document_count,
        Some(0)
    );

    let docs: Vec<NewDocument> = (0..50)
        .map(|i| {
            doc(
                &format!("d{i}"),
                &[i as f32, 1.0],
                json!({"n": i, "tag": format!("t{i}")}),
            )
        })
        .collect();
    v.upsert("nul", docs).await.unwrap();
    let filtered = |filter: Value| {
        let mut q = query(&[1.0, 1.0], 10);
        q.filter = Some(filter);
        q
    };
    let refused = v
        .search("nul", filtered(json!({"tag": "t\0"})))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "invalid_filter");
    // 4 x 1024 values: the most a filter may compare with, one bind each.
    let many = |offset: usize| (offset..offset + 1024).collect::<Vec<_>>();
    let at_limit = json!({"$or": [
        {"n": {"$in": many(0)}}, {"n": {"$in": many(2000)}},
        {"n": {"$in": many(4000)}}, {"n": {"$in": many(6000)}}
    ]});
    let hits = v.search("nul", filtered(at_limit)).await.unwrap();
    assert_eq!(hits.len(), 10);
    // 256 conditions of 1024 values each would be 262,144 binds.
    let conditions: Vec<Value> = (0..256).map(|i| json!({"n": {"$in": many(i)}})).collect();
    let refused = v
        .search("nul", filtered(json!({"$or": conditions})))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "invalid_filter");
    assert!(refused.to_string().contains("4096"), "{refused}");
}
