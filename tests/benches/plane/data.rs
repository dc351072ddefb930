//! Seeded clustered vectors with an embedding-like spectrum, and exact
//! (brute-force) nearest neighbours.
//!
//! Each point is a topic centre plus Gaussian noise whose variance decays
//! over directions as a power law (`decay`), in a per-topic order of the
//! axes. Real sentence embeddings are like that: a few directions carry most
//! of the variation inside a topic. `decay = 0` is isotropic noise (the
//! harness's `Clustered`), on which neighbours inside a topic are almost
//! equidistant and any approximate index looks poor.

use tp_tests::data::Rng;

/// The generator.
pub struct Embeddings {
    dim: usize,
    centres: Vec<Vec<f64>>,
    /// Per topic: the noise standard deviation of each axis.
    scales: Vec<Vec<f64>>,
    rng: Rng,
}

impl Embeddings {
    /// `clusters` topics in `dim` dimensions; `spread` is the noise's total
    /// size relative to the centre's (the mean intra-topic cosine is about
    /// 1 / (1 + spread²)).
    pub fn new(seed: u64, dim: usize, clusters: usize, spread: f64, decay: f64) -> Self {
        let mut rng = Rng::new(seed);
        let centres: Vec<Vec<f64>> = (0..clusters)
            .map(|_| (0..dim).map(|_| rng.normal()).collect())
            .collect();
        let weights: Vec<f64> = (1..=dim).map(|r| (r as f64).powf(-decay)).collect();
        let mean = weights.iter().sum::<f64>() / dim as f64;
        let scales = (0..clusters)
            .map(|_| {
                // A seeded shuffle of the axes (Fisher–Yates).
                let mut order: Vec<usize> = (0..dim).collect();
                for i in (1..dim).rev() {
                    let j = (rng.uniform() * (i + 1) as f64) as usize % (i + 1);
                    order.swap(i, j);
                }
                let mut scale = vec![0.0; dim];
                for (rank, axis) in order.into_iter().enumerate() {
                    scale[axis] = spread * (weights[rank] / mean).sqrt();
                }
                scale
            })
            .collect();
        Self {
            dim,
            centres,
            scales,
            rng,
        }
    }

    /// The participation ratio of the noise spectrum: how many directions
    /// effectively carry the intra-topic variation.
    pub fn effective_dimensions(&self) -> f64 {
        let var: Vec<f64> = self.scales[0].iter().map(|s| s * s).collect();
        let sum: f64 = var.iter().sum();
        sum * sum / var.iter().map(|v| v * v).sum::<f64>()
    }

    /// The next unit-length point and its topic.
    pub fn point(&mut self) -> (Vec<f32>, usize) {
        let n = self.centres.len();
        let c = (self.rng.uniform() * n as f64) as usize % n;
        let raw: Vec<f64> = (0..self.dim)
            .map(|j| self.centres[c][j] + self.scales[c][j] * self.rng.normal())
            .collect();
        let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
        (raw.iter().map(|x| (x / norm) as f32).collect(), c)
    }
}

/// Dot product with 16 independent accumulators (vectorises without `unsafe`).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
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

/// The `k` rows of `vectors` (row-major, unit length) with the highest
/// cosine similarity to each query, best first; uses every core.
pub fn exact_top_k(vectors: &[f32], dim: usize, queries: &[Vec<f32>], k: usize) -> Vec<Vec<usize>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = queries.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = queries
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|q| {
                            let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
                            for (row, v) in vectors.chunks_exact(dim).enumerate() {
                                let sim = dot(v, q);
                                if best.len() < k || sim > best[best.len() - 1].0 {
                                    let at = best.partition_point(|(s, _)| *s >= sim);
                                    best.insert(at, (sim, row));
                                    best.truncate(k);
                                }
                            }
                            best.into_iter().map(|(_, row)| row).collect()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("brute force thread"))
            .collect()
    })
}
