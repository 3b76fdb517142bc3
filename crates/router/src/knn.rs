//! Nearest training prompts in embedding space: the mean gain of the `k` training rows whose
//! mean token vectors are closest (cosine) to an item's.
//!
//! Why: a linear read-out of the mean vector cannot learn "which kinds of question are hard
//! for the weak model" from a few dozen training subjects, but the neighbours of a question
//! from an unseen subject still tend to share its difficulty (a numpy prototype on MMLU's
//! group folds: 0.607 APGR from the neighbours alone against 0.47-0.54 for ridge on the same
//! vectors). The neighbours' mean gain is itself an estimate of the expected gain, so the
//! router averages it with its linear heads' estimate.
//!
//! Why approximate (an inverted file): an exact scan of ~10,000 stored vectors costs tens of
//! microseconds per item, far over the dispatcher's 10 µs budget. The rows are clustered
//! (spherical k-means) and a query scans only the lists of its `probe` nearest centroids,
//! a few hundred rows of `dims` signed bytes each, with integer dot products and no
//! allocation. Stored compactly in the artifact: one signed byte per dimension per row and
//! the row's gain; the number of rows is capped ([`MAX_ROWS`]).

use crate::rng::SplitMix64;

/// At most this many rows are stored (a deterministic sample beyond it).
pub const MAX_ROWS: usize = 16_384;
/// At most this many neighbours are averaged.
pub const MAX_K: usize = 128;
/// Largest number of dimensions a row may have.
pub const MAX_DIMS: usize = 128;

/// How to build an index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnConfig {
    /// Leading (PCA-ordered) dimensions of the mean token vector compared (0 = no index).
    pub dims: usize,
    /// Neighbours averaged.
    pub k: usize,
    /// Inverted lists (clusters).
    pub lists: usize,
    /// Lists scanned per query.
    pub probe: usize,
    /// The neighbours' share of the score (the linear heads keep the rest).
    pub weight: f32,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            dims: 32,
            k: 50,
            lists: 64,
            probe: 6,
            weight: 0.5,
        }
    }
}

/// A built index: centroids, rows grouped by list, and each row's gain.
#[derive(Debug, Clone, PartialEq)]
pub struct KnnIndex {
    pub dims: usize,
    pub k: usize,
    pub probe: usize,
    /// The neighbours' share of the score.
    pub weight: f32,
    /// `lists × dims` unit vectors.
    pub centroids: Vec<f32>,
    /// `lists + 1` offsets into the rows: list `l` holds rows `offsets[l]..offsets[l+1]`.
    pub offsets: Vec<u32>,
    /// `rows × dims` unit vectors quantized to `round(127 x)`.
    pub vectors: Vec<i8>,
    /// Each row's gain (strong − weak quality), in [−1, 1].
    pub gains: Vec<f32>,
}

/// `v` scaled to unit length (unchanged if zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

fn quantize(v: &[f32], out: &mut [i8]) {
    for (o, x) in out.iter_mut().zip(v) {
        *o = (x * 127.0).round().clamp(-127.0, 127.0) as i8;
    }
}

/// Integer dot product of a query (widened to 16 bits once) and a stored row, 16 lanes at a
/// time: products of 16-bit values summed into 32 bits, the pattern compilers turn into
/// multiply-add vector instructions. Exact, whatever the order.
#[inline]
fn dot_i8(q: &[i16], row: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (qc, rc) = (q.chunks_exact(16), row.chunks_exact(16));
    let (qr, rr) = (qc.remainder(), rc.remainder());
    for (a, b) in qc.zip(rc) {
        for j in 0..16 {
            acc[j] += i32::from(a[j]) * i32::from(i16::from(b[j]));
        }
    }
    let tail: i32 = qr
        .iter()
        .zip(rr)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum();
    acc.iter().sum::<i32>() + tail
}

#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl KnnIndex {
    /// Builds an index over `vectors` (each at least `cfg.dims` long; only the leading
    /// `cfg.dims` are used; all-zero vectors, texts without tokens, are skipped) with their
    /// `gains`. Deterministic. `None` if no row is usable or `cfg.dims` is 0.
    pub fn build(vectors: &[Vec<f32>], gains: &[f64], cfg: &KnnConfig) -> Option<Self> {
        let dims = cfg.dims.min(MAX_DIMS);
        if dims == 0 {
            return None;
        }
        let mut rows: Vec<(Vec<f32>, f32)> = vectors
            .iter()
            .zip(gains)
            .filter(|(v, _)| v.len() >= dims && v[..dims].iter().any(|x| *x != 0.0))
            .map(|(v, g)| {
                let mut u = v[..dims].to_vec();
                normalize(&mut u);
                (u, (*g).clamp(-1.0, 1.0) as f32)
            })
            .collect();
        if rows.is_empty() {
            return None;
        }
        let mut rng = SplitMix64::new(0x6b6e_6e00);
        if rows.len() > MAX_ROWS {
            // A deterministic sample: a seeded Fisher-Yates shuffle, then the first MAX_ROWS.
            for i in (1..rows.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                rows.swap(i, j);
            }
            rows.truncate(MAX_ROWS);
        }
        let lists = cfg.lists.clamp(1, rows.len());
        let centroids = spherical_kmeans(&rows, dims, lists, &mut rng);
        let mut assigned: Vec<(usize, usize)> = rows
            .iter()
            .enumerate()
            .map(|(i, (v, _))| (nearest(&centroids, dims, v), i))
            .collect();
        assigned.sort_unstable();
        let mut offsets = vec![0u32; lists + 1];
        for &(l, _) in &assigned {
            offsets[l + 1] += 1;
        }
        for l in 0..lists {
            offsets[l + 1] += offsets[l];
        }
        let mut q = vec![0i8; assigned.len() * dims];
        let mut g = Vec::with_capacity(assigned.len());
        for (slot, &(_, i)) in assigned.iter().enumerate() {
            quantize(&rows[i].0, &mut q[slot * dims..(slot + 1) * dims]);
            g.push(rows[i].1);
        }
        Some(Self {
            dims,
            k: cfg.k.clamp(1, MAX_K),
            probe: cfg.probe.clamp(1, lists),
            weight: cfg.weight.clamp(0.0, 1.0),
            centroids,
            offsets,
            vectors: q,
            gains: g,
        })
    }

    /// Number of stored rows.
    pub fn rows(&self) -> usize {
        self.gains.len()
    }

    /// Number of lists.
    pub fn lists(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Checks the shapes and numbers (for artifacts read from disk).
    pub fn validate(&self) -> Result<(), String> {
        let lists = self.lists();
        if self.dims == 0 || self.dims > MAX_DIMS {
            return Err(format!(
                "kNN dimensions {} outside 1..={MAX_DIMS}",
                self.dims
            ));
        }
        if lists == 0 || self.centroids.len() != lists * self.dims {
            return Err(format!(
                "kNN: {} centroid numbers for {lists} lists of {} dimensions",
                self.centroids.len(),
                self.dims
            ));
        }
        if self.rows() > MAX_ROWS || self.vectors.len() != self.rows() * self.dims {
            return Err(format!(
                "kNN: {} vector bytes for {} rows of {} dimensions (at most {MAX_ROWS} rows)",
                self.vectors.len(),
                self.rows(),
                self.dims
            ));
        }
        if self.offsets[0] != 0
            || self.offsets.windows(2).any(|w| w[0] > w[1])
            || self.offsets[lists] as usize != self.rows()
        {
            return Err("kNN list offsets are not increasing from 0 to the row count".into());
        }
        if self.k == 0 || self.k > MAX_K || self.probe == 0 || self.probe > lists {
            return Err(format!(
                "kNN k {} (1..={MAX_K}) or probe {} (1..={lists}) out of range",
                self.k, self.probe
            ));
        }
        if !(0.0..=1.0).contains(&self.weight) {
            return Err(format!("kNN weight {} outside [0, 1]", self.weight));
        }
        let finite = self.centroids.iter().all(|x| x.is_finite())
            && self.gains.iter().all(|g| g.is_finite() && g.abs() <= 1.0);
        if !finite {
            return Err("a kNN centroid or gain is not a finite number (gains in [-1, 1])".into());
        }
        Ok(())
    }

    /// The mean gain of the approximate `k` nearest rows to `v` (its leading `dims` used),
    /// `None` for a zero vector. No allocation.
    pub fn mean_gain(&self, v: &[f32]) -> Option<f32> {
        let dims = self.dims;
        let mut unit = [0.0f32; MAX_DIMS];
        let unit = &mut unit[..dims];
        unit.copy_from_slice(v.get(..dims)?);
        if unit.iter().all(|x| *x == 0.0) {
            return None;
        }
        normalize(unit);
        let mut q8 = [0i8; MAX_DIMS];
        quantize(unit, &mut q8[..dims]);
        let mut q = [0i16; MAX_DIMS];
        for (w, &b) in q.iter_mut().zip(&q8[..dims]) {
            *w = i16::from(b);
        }
        let q = &q[..dims];
        // The `probe` nearest centroids (a small insertion-sorted array).
        const MAX_PROBE: usize = 64;
        let probe = self.probe.min(MAX_PROBE);
        let mut best_lists = [(f32::NEG_INFINITY, 0usize); MAX_PROBE];
        let best_lists = &mut best_lists[..probe];
        for (l, c) in self.centroids.chunks_exact(dims).enumerate() {
            let s = dot_f32(unit, c);
            if s > best_lists[probe - 1].0 {
                let mut i = probe - 1;
                while i > 0 && best_lists[i - 1].0 < s {
                    best_lists[i] = best_lists[i - 1];
                    i -= 1;
                }
                best_lists[i] = (s, l);
            }
        }
        // The k best rows of those lists: a fixed-size min-heap on similarity, whose root
        // (the worst kept) a better row replaces.
        let k = self.k;
        let mut top = [(i32::MIN, 0.0f32); MAX_K];
        let top = &mut top[..k];
        let mut filled = 0usize;
        for &(s, l) in best_lists.iter() {
            if s == f32::NEG_INFINITY {
                continue;
            }
            let (a, b) = (self.offsets[l] as usize, self.offsets[l + 1] as usize);
            let rows = self.vectors[a * dims..b * dims].chunks_exact(dims);
            for (row, &g) in rows.zip(&self.gains[a..b]) {
                let sim = dot_i8(q, row);
                if filled < k {
                    top[filled] = (sim, g);
                    sift_up(&mut top[..=filled], filled);
                    filled += 1;
                } else if sim > top[0].0 {
                    top[0] = (sim, g);
                    sift_down(top, 0);
                }
            }
        }
        if filled == 0 {
            return None;
        }
        Some(top[..filled].iter().map(|&(_, g)| g).sum::<f32>() / filled as f32)
    }
}

/// Restores the min-heap order after the entry at `i` (the last) was added.
#[inline]
fn sift_up(heap: &mut [(i32, f32)], mut i: usize) {
    while i > 0 {
        let parent = (i - 1) / 2;
        if heap[i].0 >= heap[parent].0 {
            break;
        }
        heap.swap(i, parent);
        i = parent;
    }
}

/// Restores the min-heap order after the entry at `i` grew.
#[inline]
fn sift_down(heap: &mut [(i32, f32)], mut i: usize) {
    loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut m = i;
        if l < heap.len() && heap[l].0 < heap[m].0 {
            m = l;
        }
        if r < heap.len() && heap[r].0 < heap[m].0 {
            m = r;
        }
        if m == i {
            break;
        }
        heap.swap(i, m);
        i = m;
    }
}

/// The centroid most similar to `v`.
fn nearest(centroids: &[f32], dims: usize, v: &[f32]) -> usize {
    let mut best = (f32::NEG_INFINITY, 0);
    for (l, c) in centroids.chunks_exact(dims).enumerate() {
        let s = dot_f32(v, c);
        if s > best.0 {
            best = (s, l);
        }
    }
    best.1
}

/// Spherical k-means (cosine), started from a seeded sample of distinct rows, 25 rounds.
fn spherical_kmeans(
    rows: &[(Vec<f32>, f32)],
    dims: usize,
    lists: usize,
    rng: &mut SplitMix64,
) -> Vec<f32> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut centroids: Vec<f32> = order[..lists]
        .iter()
        .flat_map(|&i| rows[i].0.iter().copied())
        .collect();
    let mut sums = vec![0.0f32; lists * dims];
    let mut counts = vec![0usize; lists];
    for _ in 0..25 {
        sums.iter_mut().for_each(|s| *s = 0.0);
        counts.iter_mut().for_each(|c| *c = 0);
        for (v, _) in rows {
            let l = nearest(&centroids, dims, v);
            counts[l] += 1;
            for (s, x) in sums[l * dims..(l + 1) * dims].iter_mut().zip(v) {
                *s += x;
            }
        }
        for l in 0..lists {
            // An empty list keeps its centroid.
            if counts[l] > 0 {
                let c = &mut centroids[l * dims..(l + 1) * dims];
                c.copy_from_slice(&sums[l * dims..(l + 1) * dims]);
                normalize(c);
            }
        }
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points() -> (Vec<Vec<f32>>, Vec<f64>) {
        // Two directions: rows near (1, 0, ...) gain 1, rows near (0, 1, ...) gain 0.
        let mut rng = SplitMix64::new(7);
        let mut v = Vec::new();
        let mut g = Vec::new();
        for i in 0..400 {
            let a = i % 2 == 0;
            let mut x: Vec<f32> = (0..8).map(|_| rng.next_f64() as f32 * 0.2 - 0.1).collect();
            x[usize::from(!a)] += 1.0;
            v.push(x);
            g.push(if a { 1.0 } else { 0.0 });
        }
        (v, g)
    }

    #[test]
    fn neighbours_carry_the_gain_of_their_region() {
        let (v, g) = points();
        let cfg = KnnConfig {
            dims: 8,
            k: 20,
            lists: 8,
            probe: 2,
            weight: 0.5,
        };
        let idx = KnnIndex::build(&v, &g, &cfg).expect("rows");
        assert!(idx.validate().is_ok());
        assert_eq!(idx.rows(), 400);
        let mut near_a = vec![0.0f32; 8];
        near_a[0] = 1.0;
        let mut near_b = vec![0.0f32; 8];
        near_b[1] = 1.0;
        assert!(idx.mean_gain(&near_a).expect("some") > 0.9);
        assert!(idx.mean_gain(&near_b).expect("some") < 0.1);
        assert_eq!(idx.mean_gain(&[0.0; 8]), None);
        // Deterministic.
        assert_eq!(KnnIndex::build(&v, &g, &cfg), Some(idx));
    }

    #[test]
    fn bad_shapes_are_refused() {
        let (v, g) = points();
        let cfg = KnnConfig {
            dims: 8,
            lists: 4,
            ..KnnConfig::default()
        };
        let idx = KnnIndex::build(&v, &g, &cfg).expect("rows");
        let mut bad = idx.clone();
        bad.vectors.pop();
        assert!(bad.validate().is_err());
        let mut bad = idx.clone();
        bad.offsets[1] = 10_000;
        assert!(bad.validate().is_err());
        let mut bad = idx;
        bad.gains[0] = f32::NAN;
        assert!(bad.validate().is_err());
        assert_eq!(KnnIndex::build(&[], &[], &cfg), None);
    }
}
