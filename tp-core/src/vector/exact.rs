//! Exact in-memory search for the embedded backend.
//!
//! Vectors live in one contiguous row-major `Vec<f32>`, so a search is a
//! single sequential pass over memory; the kernels keep 16 independent
//! accumulators so the compiler emits packed SIMD without `unsafe`.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use serde_json::Value;

use super::filter::Filter;
use super::model::Metric;

/// Lanes per kernel step: four 128-bit (or two 256-bit) registers.
const LANES: usize = 16;

/// All documents of one collection, in memory.
pub(crate) struct ExactIndex {
    dim: usize,
    metric: Metric,
    ids: Vec<String>,
    vectors: Vec<f32>,
    /// 1/‖v‖ per row, for cosine.
    inv_norms: Vec<f32>,
    metadata: Vec<Value>,
    positions: HashMap<String, usize>,
}

/// A candidate: row and raw similarity (higher is better).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate {
    pub(crate) row: usize,
    pub(crate) similarity: f32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        // Ties broken by row so results are deterministic.
        self.similarity
            .total_cmp(&other.similarity)
            .then_with(|| other.row.cmp(&self.row))
    }
}

impl ExactIndex {
    pub(crate) fn new(dim: usize, metric: Metric) -> Self {
        Self {
            dim,
            metric,
            ids: Vec::new(),
            vectors: Vec::new(),
            inv_norms: Vec::new(),
            metadata: Vec::new(),
            positions: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Bytes of vector data a full scan reads.
    pub(crate) fn scan_bytes(&self) -> usize {
        self.vectors.len() * std::mem::size_of::<f32>()
    }

    /// Inserts or replaces a document.
    pub(crate) fn upsert(&mut self, id: &str, vector: &[f32], metadata: Value) {
        debug_assert_eq!(vector.len(), self.dim);
        let inv_norm = inverse_norm(vector);
        match self.positions.get(id) {
            Some(&row) => {
                self.vectors[row * self.dim..(row + 1) * self.dim].copy_from_slice(vector);
                self.inv_norms[row] = inv_norm;
                self.metadata[row] = metadata;
            }
            None => {
                self.positions.insert(id.to_owned(), self.ids.len());
                self.ids.push(id.to_owned());
                self.vectors.extend_from_slice(vector);
                self.inv_norms.push(inv_norm);
                self.metadata.push(metadata);
            }
        }
    }

    /// Removes a document; true if it existed.
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        let Some(row) = self.positions.remove(id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        if row != last {
            let moved = self.ids[last].clone();
            self.positions.insert(moved, row);
            let (head, tail) = self.vectors.split_at_mut(last * self.dim);
            head[row * self.dim..(row + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
        }
        self.ids.swap_remove(row);
        self.inv_norms.swap_remove(row);
        self.metadata.swap_remove(row);
        self.vectors.truncate(last * self.dim);
        true
    }

    pub(crate) fn id(&self, row: usize) -> &str {
        &self.ids[row]
    }

    pub(crate) fn metadata(&self, row: usize) -> &Value {
        &self.metadata[row]
    }

    pub(crate) fn vector(&self, row: usize) -> &[f32] {
        &self.vectors[row * self.dim..(row + 1) * self.dim]
    }

    /// The `k` most similar rows that pass `filter`, best first.
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Vec<Candidate> {
        let query_inv_norm = inverse_norm(query);
        let mut heap: BinaryHeap<Reverse<Candidate>> = BinaryHeap::with_capacity(k + 1);
        for (row, vector) in self.vectors.chunks_exact(self.dim).enumerate() {
            if let Some(filter) = filter
                && !filter.matches(&self.metadata[row])
            {
                continue;
            }
            let similarity = match self.metric {
                Metric::Cosine => dot(vector, query) * self.inv_norms[row] * query_inv_norm,
                Metric::InnerProduct => dot(vector, query),
                Metric::L2 => -squared_l2(vector, query),
            };
            let candidate = Candidate { row, similarity };
            if heap.len() < k {
                heap.push(Reverse(candidate));
            } else if heap.peek().is_some_and(|Reverse(worst)| candidate > *worst) {
                heap.pop();
                heap.push(Reverse(candidate));
            }
        }
        let mut best: Vec<Candidate> = heap.into_iter().map(|Reverse(c)| c).collect();
        best.sort_unstable_by(|a, b| b.cmp(a));
        best
    }

    /// pgvector-style distance for a candidate's similarity.
    pub(crate) fn distance(&self, similarity: f32) -> f64 {
        let s = f64::from(similarity);
        match self.metric {
            Metric::Cosine => 1.0 - s,
            Metric::InnerProduct => -s,
            Metric::L2 => (-s).max(0.0).sqrt(),
        }
    }
}

fn inverse_norm(v: &[f32]) -> f32 {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 { 1.0 / norm } else { 0.0 }
}

/// Dot product with `LANES` independent accumulators.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Squared Euclidean distance with `LANES` independent accumulators.
pub(crate) fn squared_l2(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn brute(index: &ExactIndex, query: &[f32], k: usize) -> Vec<String> {
        let mut all: Vec<(f64, String)> = (0..index.len())
            .map(|row| {
                let v = index.vector(row);
                let s = match index.metric {
                    Metric::Cosine => {
                        let d: f64 = v.iter().zip(query).map(|(a, b)| f64::from(a * b)).sum();
                        let na: f64 = v.iter().map(|a| f64::from(a * a)).sum::<f64>().sqrt();
                        let nb: f64 = query.iter().map(|a| f64::from(a * a)).sum::<f64>().sqrt();
                        d / (na * nb)
                    }
                    Metric::InnerProduct => {
                        v.iter().zip(query).map(|(a, b)| f64::from(a * b)).sum()
                    }
                    Metric::L2 => -v
                        .iter()
                        .zip(query)
                        .map(|(a, b)| f64::from((a - b) * (a - b)))
                        .sum::<f64>(),
                };
                (s, index.id(row).to_owned())
            })
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        all.into_iter().take(k).map(|(_, id)| id).collect()
    }

    fn pseudo_random(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_for_every_metric_after_updates_and_removals() {
        for metric in [Metric::Cosine, Metric::L2, Metric::InnerProduct] {
            let dim = 37; // not a multiple of the lane count
            let mut index = ExactIndex::new(dim, metric);
            for i in 0..300u64 {
                index.upsert(&format!("d{i}"), &pseudo_random(i, dim), json!({"i": i}));
            }
            for i in (0..300u64).step_by(7) {
                assert!(index.remove(&format!("d{i}")));
            }
            for i in (1..300u64).step_by(11) {
                index.upsert(
                    &format!("d{i}"),
                    &pseudo_random(i + 1000, dim),
                    json!({"i": i}),
                );
            }
            assert!(!index.remove("d0"));
            let query = pseudo_random(9999, dim);
            let got: Vec<String> = index
                .search(&query, 10, None)
                .iter()
                .map(|c| index.id(c.row).to_owned())
                .collect();
            assert_eq!(got, brute(&index, &query, 10), "{metric}");
        }
    }

    #[test]
    fn filter_applies_before_ranking() {
        let mut index = ExactIndex::new(2, Metric::L2);
        index.upsert("near", &[0.0, 0.0], json!({"keep": false}));
        index.upsert("far", &[5.0, 5.0], json!({"keep": true}));
        let filter = Filter::parse(&json!({"keep": true})).unwrap();
        let hits = index.search(&[0.0, 0.0], 5, Some(&filter));
        assert_eq!(hits.len(), 1);
        assert_eq!(index.id(hits[0].row), "far");
        assert!((index.distance(hits[0].similarity) - 50f64.sqrt()).abs() < 1e-5);
    }
}
