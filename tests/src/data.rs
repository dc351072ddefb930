//! Seeded, clustered vectors: the shape of real embeddings (topics), unlike
//! uniform noise, on which any approximate index looks broken.

/// A seeded xorshift generator with Gaussian samples.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `clusters` topic centres in `dim` dimensions; points scatter around them.
pub struct Clustered {
    centres: Vec<Vec<f64>>,
    spread: f64,
    rng: Rng,
}

impl Clustered {
    /// A generator with `clusters` centres and relative spread `spread`
    /// (0.5–0.8 gives intra-topic cosine similarities like sentence embeddings).
    pub fn new(seed: u64, dim: usize, clusters: usize, spread: f64) -> Self {
        let mut rng = Rng::new(seed);
        let centres = (0..clusters)
            .map(|_| (0..dim).map(|_| rng.normal()).collect())
            .collect();
        Self {
            centres,
            spread,
            rng,
        }
    }

    /// The next unit-length point.
    pub fn point(&mut self) -> Vec<f32> {
        let c = (self.rng.uniform() * self.centres.len() as f64) as usize % self.centres.len();
        let centre = &self.centres[c];
        let raw: Vec<f64> = centre
            .iter()
            .map(|x| x + self.spread * self.rng.normal())
            .collect();
        let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
        raw.iter().map(|x| (x / norm) as f32).collect()
    }
}
