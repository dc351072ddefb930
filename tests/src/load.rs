//! A bounded load generator for fault tests: a mix of reads, idempotent
//! writes (remembered when acknowledged) and non-idempotent searches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use crate::Client;

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Requests sent.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Non-2xx answers by status, for idempotent requests.
    pub failed_idempotent: BTreeMap<u16, u64>,
    /// Non-2xx answers by status, for non-idempotent requests (POST).
    pub failed_other: BTreeMap<u16, u64>,
    /// Requests with no answer (connection errors, timeouts).
    pub transport_errors: u64,
    /// Slowest answer.
    pub slowest: Duration,
    /// Ids of documents whose upsert was acknowledged.
    pub acknowledged: Vec<String>,
    /// The first few failures, for the assertion message.
    pub examples: Vec<String>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.sent += other.sent;
        self.ok += other.ok;
        for (k, v) in other.failed_idempotent {
            *self.failed_idempotent.entry(k).or_default() += v;
        }
        for (k, v) in other.failed_other {
            *self.failed_other.entry(k).or_default() += v;
        }
        self.transport_errors += other.transport_errors;
        self.slowest = self.slowest.max(other.slowest);
        self.acknowledged.extend(other.acknowledged);
        if self.examples.len() < 5 {
            self.examples.extend(other.examples.into_iter().take(5));
        }
    }

    /// Failed requests of any kind.
    pub fn failed(&self) -> u64 {
        self.failed_idempotent.values().sum::<u64>()
            + self.failed_other.values().sum::<u64>()
            + self.transport_errors
    }

    /// One line for CI logs.
    pub fn summary(&self, scenario: &str) -> String {
        format!(
            "[{scenario}] sent={} ok={} failed_idempotent={:?} failed_post={:?} transport_errors={} slowest={:?} acknowledged_writes={}",
            self.sent,
            self.ok,
            self.failed_idempotent,
            self.failed_other,
            self.transport_errors,
            self.slowest,
            self.acknowledged.len()
        )
    }
}

/// A running load; stop it to get its [`Stats`].
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Stats>>,
}

/// Which requests a load sends.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Include `POST …/search` (not retried by proxies once sent).
    pub posts: bool,
}

impl Load {
    /// Starts `workers` tasks against `base` (e.g. nginx), collection `docs` (dimension 3).
    pub fn start(base: &str, token: &str, workers: usize, mix: Mix) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|w| {
                let client = Client::new()
                    .with_token(token)
                    .with_timeout(Duration::from_secs(15));
                let base = base.to_owned();
                let stop = stop.clone();
                tokio::spawn(async move { worker(w, client, base, stop, mix).await })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the workers and adds up what they saw.
    pub async fn stop(self) -> Stats {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Stats::default();
        for worker in self.workers {
            total.merge(worker.await.expect("load worker"));
        }
        total
    }
}

async fn worker(w: usize, client: Client, base: String, stop: Arc<AtomicBool>, mix: Mix) -> Stats {
    let mut stats = Stats::default();
    let mut last_put_acknowledged = false;
    // Bounded by count as well as by the stop flag.
    for i in 0..20_000usize {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let id = format!("w{w}-{i}");
        let step = i % 4;
        let (method, url, body, idempotent) = match step {
            0 => (
                Method::PUT,
                format!("{base}/api/collections/docs/documents"),
                Some(json!({"documents": [{"id": id, "vector": [1.0, (i % 7) as f32, 0.5]}]})),
                true,
            ),
            1 => (
                Method::GET,
                format!("{base}/api/collections/docs/documents/w{w}-{}", i - 1),
                None,
                true,
            ),
            2 if mix.posts => (
                Method::POST,
                format!("{base}/api/collections/docs/search"),
                Some(json!({"vector": [1.0, 2.0, 0.5], "k": 3})),
                false,
            ),
            _ => (Method::GET, format!("{base}/api/auth/me"), None, true),
        };
        let started = Instant::now();
        let reply = match body {
            Some(body) => {
                let bytes = bytes::Bytes::from(serde_json::to_vec(&body).expect("json"));
                client
                    .send(
                        method.clone(),
                        &url,
                        &[("content-type", "application/json")],
                        Some(bytes),
                    )
                    .await
            }
            None => client.send(method.clone(), &url, &[], None).await,
        };
        stats.sent += 1;
        stats.slowest = stats.slowest.max(started.elapsed());
        if step == 0 {
            last_put_acknowledged = matches!(&reply, Ok(r) if r.status.is_success());
        }
        match reply {
            Ok(reply) if reply.status.is_success() => {
                stats.ok += 1;
                if step == 0 {
                    stats.acknowledged.push(id);
                }
            }
            // Reading back a write that failed: its absence is the right answer.
            Ok(reply) if step == 1 && !last_put_acknowledged && reply.status == 404 => {
                stats.ok += 1;
            }
            Ok(reply) => {
                let bucket = if idempotent {
                    &mut stats.failed_idempotent
                } else {
                    &mut stats.failed_other
                };
                *bucket.entry(reply.status.as_u16()).or_default() += 1;
                if stats.examples.len() < 5 {
                    stats.examples.push(format!(
                        "{method} {url}: {} {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    ));
                }
            }
            Err(e) => {
                stats.transport_errors += 1;
                if stats.examples.len() < 5 {
                    stats.examples.push(format!("{method} {url}: {e}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stats
}
