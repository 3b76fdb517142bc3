//! Principal components of a set of vectors: the covariance matrix's eigenvectors, found by
//! cyclic Jacobi rotations (exact for a symmetric matrix, and small enough here: 384 × 384).

/// The result of a PCA: the mean, the components (rows, by decreasing variance) and the
/// variance along each.
pub struct Pca {
    pub mean: Vec<f64>,
    pub components: Vec<Vec<f64>>,
    pub variances: Vec<f64>,
    pub total_variance: f64,
}

/// PCA of `rows` (each of the same length), keeping `k` components.
pub fn fit(rows: &[Vec<f32>], k: usize) -> Pca {
    let n = rows.len().max(1) as f64;
    let d = rows.first().map_or(0, Vec::len);
    let mut mean = vec![0.0; d];
    for r in rows {
        for (m, &x) in mean.iter_mut().zip(r) {
            *m += f64::from(x) / n;
        }
    }
    let mut cov = vec![vec![0.0; d]; d];
    let mut centered = vec![0.0; d];
    for r in rows {
        for ((c, &x), m) in centered.iter_mut().zip(r).zip(&mean) {
            *c = f64::from(x) - m;
        }
        for (i, row) in cov.iter_mut().enumerate() {
            let ci = centered[i];
            for (c, &cj) in row[i..].iter_mut().zip(&centered[i..]) {
                *c += ci * cj;
            }
        }
    }
    // Only the upper triangle was accumulated: scale it and mirror it.
    let upper: Vec<Vec<f64>> = cov
        .iter()
        .map(|row| row.iter().map(|c| c / n).collect())
        .collect();
    for (i, row) in cov.iter_mut().enumerate() {
        for (j, c) in row.iter_mut().enumerate() {
            *c = if j >= i { upper[i][j] } else { upper[j][i] };
        }
    }
    let total_variance = (0..d).map(|i| cov[i][i]).sum();
    let (values, vectors) = jacobi_eigen(cov);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let k = k.min(d);
    Pca {
        mean,
        components: order[..k]
            .iter()
            .map(|&c| (0..d).map(|i| vectors[i][c]).collect())
            .collect(),
        variances: order[..k].iter().map(|&c| values[c]).collect(),
        total_variance,
    }
}

/// Eigenvalues and eigenvectors (as the columns of the returned matrix) of a symmetric
/// matrix.
fn jacobi_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut v = vec![vec![0.0; n]; n];
    for (i, row) in v.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for _sweep in 0..50 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        let diag: f64 = (0..n).map(|i| a[i][i] * a[i][i]).sum();
        if off <= 1e-22 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p][q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (akp, akq) = (row[p], row[q]);
                    row[p] = c * akp - s * akq;
                    row[q] = s * akp + c * akq;
                }
                // Rows p < q, both mutable at once.
                let (low, high) = a.split_at_mut(q);
                for (x, y) in low[p].iter_mut().zip(high[0].iter_mut()) {
                    let (apk, aqk) = (*x, *y);
                    *x = c * apk - s * aqk;
                    *y = s * apk + c * aqk;
                }
                for row in v.iter_mut() {
                    let (vkp, vkq) = (row[p], row[q]);
                    row[p] = c * vkp - s * vkq;
                    row[q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i][i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_direction_of_most_variance() {
        // Points along (1, 2, 0) with a little noise in the other directions.
        let rows: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                let t = (i as f32 - 100.0) / 10.0;
                let e = ((i * 7919) % 13) as f32 / 100.0 - 0.06;
                vec![t + e, 2.0 * t - e, e * 0.5]
            })
            .collect();
        let p = fit(&rows, 2);
        let c = &p.components[0];
        let norm = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
        assert!((norm - 1.0).abs() < 1e-9);
        let cos = (c[0] + 2.0 * c[1]).abs() / 5f64.sqrt();
        assert!(cos > 0.999, "{c:?}");
        assert!(p.variances[0] > 10.0 * p.variances[1]);
        assert!(p.variances[0] <= p.total_variance);
    }

    #[test]
    fn eigen_decomposition_of_a_known_matrix() {
        let (values, vectors) = jacobi_eigen(vec![vec![2.0, 1.0], vec![1.0, 2.0]]);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        assert!((sorted[0] - 1.0).abs() < 1e-12 && (sorted[1] - 3.0).abs() < 1e-12);
        // A v = λ v for each column.
        for (c, &l) in values.iter().enumerate() {
            let (x, y) = (vectors[0][c], vectors[1][c]);
            assert!((2.0 * x + y - l * x).abs() < 1e-9);
            assert!((x + 2.0 * y - l * y).abs() < 1e-9);
        }
    }
}
