//! Weighted linear fits with an intercept, as scikit-learn's `LinearRegression` and `Lasso` fit
//! them with `sample_weight` (Captum's Kernel SHAP and LIME surrogates).
//!
//! `x` is rows of 0/1 features, `y` rows of outputs, `w` one weight per row. The intercept is
//! not penalised: both fits work on data centred with the weighted means.

/// Weighted means of the columns of `rows`.
fn weighted_means(rows: &[Vec<f64>], w: &[f64]) -> Vec<f64> {
    let cols = rows.first().map_or(0, Vec::len);
    let total: f64 = w.iter().sum();
    let mut m = vec![0.0; cols];
    for (r, &wi) in rows.iter().zip(w) {
        for (mj, v) in m.iter_mut().zip(r) {
            *mj += wi * v;
        }
    }
    if total > 0.0 {
        m.iter_mut().for_each(|v| *v /= total);
    }
    m
}

fn centred(rows: &[Vec<f64>], means: &[f64]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|r| r.iter().zip(means).map(|(v, m)| v - m).collect())
        .collect()
}

/// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations: (values, vectors as
/// columns of `v`, i.e. `v[i][k]` is component i of eigenvector k).
#[allow(clippy::needless_range_loop)]
fn sym_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let n = a.len();
    let mut v = vec![vec![0.0; n]; n];
    for (i, row) in v.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    let norm: f64 = a.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * norm || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q].abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k][p], a[k][q]);
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p][k], a[q][k]);
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
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

/// Weighted least squares with an intercept, every output column at once:
/// `coef[o][j]` minimises `sum_i w_i (y_io - b_o - x_i . coef_o)^2`. When the design is rank
/// deficient this is the minimum-norm solution (as `scipy.linalg.lstsq` gives).
pub(crate) fn weighted_least_squares(x: &[Vec<f64>], y: &[Vec<f64>], w: &[f64]) -> Vec<Vec<f64>> {
    let p = x.first().map_or(0, Vec::len);
    let outs = y.first().map_or(0, Vec::len);
    let xc = centred(x, &weighted_means(x, w));
    let yc = centred(y, &weighted_means(y, w));
    let mut g = vec![vec![0.0; p]; p];
    let mut b = vec![vec![0.0; outs]; p];
    for ((xr, yr), &wi) in xc.iter().zip(&yc).zip(w) {
        for j in 0..p {
            let wx = wi * xr[j];
            if wx == 0.0 {
                continue;
            }
            for k in 0..p {
                g[j][k] += wx * xr[k];
            }
            for o in 0..outs {
                b[j][o] += wx * yr[o];
            }
        }
    }
    let (vals, vecs) = sym_eigen(g);
    let top = vals.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let cut = top * 1e-11;
    let mut coef = vec![vec![0.0; p]; outs];
    for (k, &lambda) in vals.iter().enumerate() {
        if lambda <= cut || lambda <= 0.0 {
            continue;
        }
        for (o, row) in coef.iter_mut().enumerate() {
            let proj: f64 = (0..p).map(|j| vecs[j][k] * b[j][o]).sum::<f64>() / lambda;
            for (j, c) in row.iter_mut().enumerate() {
                *c += vecs[j][k] * proj;
            }
        }
    }
    coef
}

/// Weighted Lasso with an intercept, one output column: minimises
/// `1/(2 sum w) sum_i w_i (y_i - b - x_i . coef)^2 + alpha |coef|_1` by coordinate descent,
/// to convergence. `start` warm-starts the coefficients.
pub(crate) fn weighted_lasso(
    x: &[Vec<f64>],
    y: &[f64],
    w: &[f64],
    alpha: f64,
    start: Option<&[f64]>,
) -> Vec<f64> {
    let p = x.first().map_or(0, Vec::len);
    let total: f64 = w.iter().sum();
    if total <= 0.0 {
        return vec![0.0; p];
    }
    let xc = centred(x, &weighted_means(x, w));
    let ym = y.iter().zip(w).map(|(v, wi)| v * wi).sum::<f64>() / total;
    let mut coef: Vec<f64> = start.map_or_else(|| vec![0.0; p], <[f64]>::to_vec);
    let mut r: Vec<f64> = y
        .iter()
        .zip(&xc)
        .map(|(v, xr)| v - ym - xr.iter().zip(&coef).map(|(a, c)| a * c).sum::<f64>())
        .collect();
    let z: Vec<f64> = (0..p)
        .map(|j| xc.iter().zip(w).map(|(xr, wi)| wi * xr[j] * xr[j]).sum::<f64>() / total)
        .collect();
    let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    for _ in 0..10_000 {
        let mut biggest = 0.0f64;
        for j in 0..p {
            if z[j] <= 1e-300 {
                coef[j] = 0.0;
                continue;
            }
            let rho = xc
                .iter()
                .zip(&r)
                .zip(w)
                .map(|((xr, ri), wi)| wi * xr[j] * ri)
                .sum::<f64>()
                / total
                + z[j] * coef[j];
            let new = soft(rho, alpha) / z[j];
            let d = new - coef[j];
            if d != 0.0 {
                for (ri, xr) in r.iter_mut().zip(&xc) {
                    *ri -= xr[j] * d;
                }
                coef[j] = new;
                biggest = biggest.max(d.abs());
            }
        }
        if biggest <= 1e-13 * scale {
            break;
        }
    }
    coef
}

fn soft(v: f64, t: f64) -> f64 {
    if v > t {
        v - t
    } else if v < -t {
        v + t
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn design() -> (Vec<Vec<f64>>, Vec<f64>) {
        // All 3-bit rows twice, with uneven weights.
        let x: Vec<Vec<f64>> = (0..16u32)
            .map(|m| (0..3).map(|j| f64::from((m >> j) & 1)).collect())
            .collect();
        let w = (0..16).map(|i| 0.5 + (i % 5) as f64).collect();
        (x, w)
    }

    #[test]
    fn least_squares_recovers_a_linear_function_and_intercept() {
        let (x, w) = design();
        let y: Vec<Vec<f64>> = x
            .iter()
            .map(|r| vec![1.5 + 2.0 * r[0] - 3.0 * r[1] + 0.25 * r[2], r[2]])
            .collect();
        let c = weighted_least_squares(&x, &y, &w);
        for (a, b) in c[0].iter().zip([2.0, -3.0, 0.25]) {
            assert!((a - b).abs() < 1e-9, "{c:?}");
        }
        for (a, b) in c[1].iter().zip([0.0, 0.0, 1.0]) {
            assert!((a - b).abs() < 1e-9, "{c:?}");
        }
    }

    #[test]
    fn least_squares_is_minimum_norm_when_rank_deficient() {
        // Columns 0 and 1 identical: the fit splits the effect evenly; column 2 is constant.
        let x: Vec<Vec<f64>> = (0..8)
            .map(|i| vec![f64::from(i % 2), f64::from(i % 2), 1.0])
            .collect();
        let y: Vec<Vec<f64>> = x.iter().map(|r| vec![4.0 * r[0]]).collect();
        let c = weighted_least_squares(&x, &y, &[1.0; 8]);
        assert!(
            (c[0][0] - 2.0).abs() < 1e-9 && (c[0][1] - 2.0).abs() < 1e-9 && c[0][2].abs() < 1e-9,
            "{c:?}"
        );
    }

    #[test]
    fn lasso_satisfies_its_optimality_conditions() {
        let (x, w) = design();
        let y: Vec<f64> = x
            .iter()
            .map(|r| 0.3 + 1.0 * r[0] - 0.02 * r[1] + 0.5 * r[0] * r[2])
            .collect();
        let alpha = 0.05;
        let c = weighted_lasso(&x, &y, &w, alpha, None);
        // KKT: the gradient of the smooth part is -alpha*sign(c_j) where c_j != 0, and within
        // [-alpha, alpha] where c_j == 0.
        let total: f64 = w.iter().sum();
        let xm = weighted_means(&x, &w);
        let ym = y.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() / total;
        for j in 0..3 {
            let g: f64 = (0..x.len())
                .map(|i| {
                    let fit: f64 = (0..3).map(|k| (x[i][k] - xm[k]) * c[k]).sum();
                    w[i] * (x[i][j] - xm[j]) * (y[i] - ym - fit)
                })
                .sum::<f64>()
                / total;
            if c[j] != 0.0 {
                assert!((g - alpha * c[j].signum()).abs() < 1e-9, "j={j} g={g} c={c:?}");
            } else {
                assert!(g.abs() <= alpha + 1e-12, "j={j} g={g}");
            }
        }
        assert_eq!(c[1], 0.0, "the tiny effect is shrunk to zero: {c:?}");
        // alpha = 0 is least squares.
        let ls = weighted_least_squares(&x, &y.iter().map(|v| vec![*v]).collect::<Vec<_>>(), &w);
        let l0 = weighted_lasso(&x, &y, &w, 0.0, None);
        for (a, b) in l0.iter().zip(&ls[0]) {
            assert!((a - b).abs() < 1e-9);
        }
    }
}
