//! `tenant-plane export` and `import` through the real binary: one embedded
//! SQLite replica's collections moved to PostgreSQL with every vector
//! exact, searches that agree, a re-import that changes nothing, and
//! cut-off or mismatched input refused with a clear reason.

use std::path::Path;

use http::Method;
use serde_json::{Value, json};
use tp_tests::postgres::fresh_database;
use tp_tests::replica::{Replica, prod_env, run, set};
use tp_tests::{Client, temp_dir};

/// More than one export page (500) and one import batch.
const DOCS: usize = 1234;

fn sqlite_env(dir: &Path) -> Vec<(String, String)> {
    let mut env = prod_env(&format!("sqlite://{}", dir.join("tp.db").display()));
    set(&mut env, "TP_DATA_DIR", &dir.to_string_lossy());
    env
}

fn vector(i: usize) -> Vec<f32> {
    // Values with long decimal expansions, so a lossy round trip shows.
    let x = i as f32;
    vec![
        (x * 0.37).sin() + 1.1,
        (x * 0.11).cos() / 3.0,
        1.0 / (x + 7.0),
    ]
}

async fn fill(client: &Client, replica: &Replica) {
    for (name, dimension, metric) in [("docs", 3, "cosine"), ("notes", 2, "l2")] {
        let reply = client
            .json(
                Method::POST,
                &replica.url("/api/collections"),
                None,
                &json!({"name": name, "dimension": dimension, "metric": metric}),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.json());
    }
    let docs: Vec<Value> = (0..DOCS)
        .map(|i| {
            json!({
                "id": format!("doc-{i:05}"),
                "vector": vector(i),
                "content": format!("document number {i} — ünïcode"),
                "metadata": {"n": i, "even": i % 2 == 0, "tags": ["a", format!("t{}", i % 7)]},
            })
        })
        .collect();
    for chunk in docs.chunks(1000) {
        let reply = client
            .json(
                Method::PUT,
                &replica.url("/api/collections/docs/documents"),
                None,
                &json!({ "documents": chunk }),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json());
    }
    let reply = client
        .json(
            Method::PUT,
            &replica.url("/api/collections/notes/documents"),
            None,
            &json!({"documents": [
                {"id": "n1", "vector": [0.5, -2.25]},
                {"id": "n2", "vector": [1e-7, 3.0], "content": null, "metadata": {"deep": {"x": [1, 2]}}},
            ]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
}

async fn search(client: &Client, replica: &Replica, body: Value) -> Vec<(String, f64)> {
    let reply = client
        .json(
            Method::POST,
            &replica.url("/api/collections/docs/search"),
            None,
            &body,
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    reply.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_owned(),
                h["distance"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_move_from_sqlite_to_postgres_exactly_and_reimport_is_harmless() {
    let dir = temp_dir("export");
    let lite = sqlite_env(&dir);
    let source = Replica::start(&lite);
    let token = source.admin_token(&lite).await;
    let client = Client::new().with_token(&token);
    fill(&client, &source).await;

    // Exported next to the serving replica.
    let file = dir.join("collections.jsonl");
    let out = run(
        &["export", "--output", &file.to_string_lossy()],
        &lite,
        &dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("exported 2 collection(s), 1236 document(s)"),
        "{stderr}"
    );
    assert!(!dir.join("collections.partial").exists());
    let exported = lines(&file);
    assert_eq!(exported[0]["tenant_plane_export"], 1);
    assert_eq!(exported[0]["tenant"], "acme-corp");
    assert_eq!(exported.len(), 1 + 2 + DOCS + 2 + 1);
    assert_eq!(
        exported.last().unwrap()["end"],
        json!({"collections": 2, "documents": DOCS + 2})
    );

    // Into PostgreSQL.
    let pg = prod_env(&fresh_database());
    let out = run(&["import", "--input", &file.to_string_lossy()], &pg, &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("created 2 collection(s)"), "{stderr}");
    let target = Replica::start(&pg);
    let pg_token = target.admin_token(&pg).await;
    let pg_client = Client::new().with_token(&pg_token);

    for (name, count, metric) in [("docs", DOCS, "cosine"), ("notes", 2, "l2")] {
        let got = pg_client
            .get(&target.url(&format!("/api/collections/{name}")), None)
            .await
            .json();
        assert_eq!(got["document_count"], count, "{name}");
        assert_eq!(got["metric"], metric);
    }
    for id in ["doc-00000", "doc-00777", "doc-01233"] {
        let path = format!("/api/collections/docs/documents/{id}?include_vector=true");
        let before = client.get(&source.url(&path), None).await.json();
        let after = pg_client.get(&target.url(&path), None).await.json();
        assert_eq!(before, after, "{id} differs after the move");
    }
    let n2 = pg_client
        .get(
            &target.url("/api/collections/notes/documents/n2?include_vector=true"),
            None,
        )
        .await
        .json();
    assert_eq!(n2["vector"], json!([1e-7, 3.0]));
    assert_eq!(n2["metadata"], json!({"deep": {"x": [1, 2]}}));

    // The same neighbours, exact search on both sides, filtered or not.
    for (i, filter) in [
        (3, json!(null)),
        (900, json!({"even": true, "n": {"$lt": 600}})),
    ] {
        let mut body = json!({"vector": vector(i), "k": 10, "exact": true});
        if !filter.is_null() {
            body["filter"] = filter;
        }
        let want = search(&client, &source, body.clone()).await;
        let got = search(&pg_client, &target, body).await;
        assert_eq!(want.len(), 10);
        let ids = |hits: &[(String, f64)]| hits.iter().map(|h| h.0.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&want), ids(&got));
        for (w, g) in want.iter().zip(&got) {
            assert!((w.1 - g.1).abs() < 1e-5, "{w:?} vs {g:?}");
        }
    }

    // Again: nothing new, nothing lost.
    let out = run(&["import", "--input", &file.to_string_lossy()], &pg, &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("created 0 collection(s)"), "{stderr}");
    let got = pg_client
        .get(&target.url("/api/collections/docs"), None)
        .await
        .json();
    assert_eq!(got["document_count"], DOCS);

    // An export from PostgreSQL reads back the same documents.
    let again = dir.join("from-pg.jsonl");
    let out = run(&["export", "--output", &again.to_string_lossy()], &pg, &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_pg = lines(&again);
    assert_eq!(from_pg.len(), exported.len());
    assert_eq!(
        from_pg[1..],
        exported[1..],
        "documents differ between backends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_mismatched_or_locked_imports_are_refused_with_a_reason() {
    let dir = temp_dir("import-bad");
    let lite = sqlite_env(&dir);
    let source = Replica::start(&lite);
    let token = source.admin_token(&lite).await;
    let client = Client::new().with_token(&token);
    fill(&client, &source).await;
    let file = dir.join("all.jsonl");
    let out = run(
        &["export", "--output", &file.to_string_lossy()],
        &lite,
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Into the SQLite file a replica is serving: refused, nothing written.
    let out = run(&["import", "--input", &file.to_string_lossy()], &lite, &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("stop the replica for the import"),
        "{stderr}"
    );

    // Cut off mid-way: what was read is written, the exit code says it failed.
    let text = std::fs::read_to_string(&file).unwrap();
    let cut: String = text.lines().take(700).map(|l| format!("{l}\n")).collect();
    let cut_file = dir.join("cut.jsonl");
    std::fs::write(&cut_file, cut).unwrap();
    let pg = prod_env(&fresh_database());
    let out = run(
        &["import", "--input", &cut_file.to_string_lossy()],
        &pg,
        &dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("truncated_export"), "{stderr}");
    // The complete file afterwards finishes the job.
    let out = run(&["import", "--input", &file.to_string_lossy()], &pg, &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A collection of the same name but another shape: refused before any write.
    let other = prod_env(&fresh_database());
    let target = Replica::start(&other);
    let other_token = target.admin_token(&other).await;
    let other_client = Client::new().with_token(&other_token);
    let reply = other_client
        .json(
            Method::POST,
            &target.url("/api/collections"),
            None,
            &json!({"name": "docs", "dimension": 4}),
        )
        .await;
    assert_eq!(reply.status, 201);
    let out = run(
        &["import", "--input", &file.to_string_lossy()],
        &other,
        &dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("collection_mismatch"), "{stderr}");
    let docs = other_client
        .get(&target.url("/api/collections/docs"), None)
        .await
        .json();
    assert_eq!(docs["document_count"], 0);

    // Not an export at all.
    let junk = dir.join("junk.jsonl");
    std::fs::write(&junk, "{\"hello\": 1}\n").unwrap();
    let out = run(&["import", "--input", &junk.to_string_lossy()], &pg, &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 1") && stderr.contains("invalid_export"),
        "{stderr}"
    );
}
