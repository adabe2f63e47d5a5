//! ContextCite (Cohen-Wang et al., 2024), number for number as the `context-cite` package
//! computes it: random coalitions keeping each feature with probability 1/2, and a Lasso fitted
//! to the response, as `LassoRegression.fit` does it with scikit-learn: the coalitions
//! standardized (`StandardScaler`), the response divided by the number of output tokens,
//! `Lasso(alpha=0.01)` solved by scikit-learn's cyclic coordinate descent with its stopping
//! rule, and the weights scaled back. The response (the evaluator's values) is the
//! logit-probability, `attr_target` `logit_prob`.

use rand::Rng;

use super::{Attribution, Coalition, Evaluator};
use crate::error::Result;

/// `LassoRegression`'s default `lasso_alpha`.
pub(super) const CONTEXT_CITE_ALPHA: f64 = 0.01;
/// ContextCite's `ablation_keep_prob`.
pub(super) const KEEP_PROB: f64 = 0.5;
/// scikit-learn's `Lasso` defaults.
const MAX_ITER: usize = 1000;
const TOL: f64 = 1e-4;

/// The coalitions ContextCite draws: `n_samples`, each feature kept with probability 1/2.
pub fn context_cite_masks(n: usize, n_samples: usize, rng: &mut impl Rng) -> Vec<Coalition> {
    (0..n_samples)
        .map(|_| (0..n).map(|_| rng.random_bool(KEEP_PROB)).collect())
        .collect()
}

/// ContextCite over `ev`'s features. The sequence row is fitted as the package fits a whole
/// response (divided by its number of tokens, the weights multiplied back); each token row as
/// the package fits a one-token range.
pub(crate) fn context_cite(
    ev: &mut dyn Evaluator,
    n_samples: usize,
    rng: &mut impl Rng,
) -> Result<Attribution> {
    let masks = context_cite_masks(ev.n_features(), n_samples, rng);
    let y = ev.values(&masks)?;
    let outputs = ev.n_outputs();
    let tokens = outputs.saturating_sub(1).max(1);
    let attr = (0..outputs)
        .map(|o| {
            let column: Vec<f64> = y.iter().map(|r| r.get(o).copied().unwrap_or(0.0)).collect();
            context_cite_weights(&masks, &column, if o == 0 { tokens } else { 1 })
        })
        .collect();
    Ok(Attribution { attr, stderr: None })
}

/// `LassoRegression(0.01).fit(masks, outputs, num_output_tokens)`'s weights.
pub fn context_cite_weights(masks: &[Coalition], outputs: &[f64], num_output_tokens: usize) -> Vec<f64> {
    let n = masks.first().map_or(0, Vec::len);
    let rows = masks.len();
    if rows == 0 {
        return vec![0.0; n];
    }
    let t = num_output_tokens as f64;
    // StandardScaler: population standard deviation, 1 for a constant column.
    let x: Vec<Vec<f64>> = masks
        .iter()
        .map(|m| m.iter().map(|&b| f64::from(u8::from(b))).collect())
        .collect();
    let mut scale = vec![1.0; n];
    let mut columns = Vec::with_capacity(n);
    for (j, s) in scale.iter_mut().enumerate() {
        let mean = x.iter().map(|r| r[j]).sum::<f64>() / rows as f64;
        let var = x.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / rows as f64;
        if var > 10.0 * f64::EPSILON * mean.abs().max(1.0) {
            *s = var.sqrt();
        }
        columns.push(x.iter().map(|r| (r[j] - mean) / *s).collect::<Vec<f64>>());
    }
    let y: Vec<f64> = outputs.iter().map(|v| v / t).collect();
    let coef = lasso_cd(&columns, &y, CONTEXT_CITE_ALPHA);
    coef.iter().zip(&scale).map(|(c, s)| c / s * t).collect()
}

/// scikit-learn's `Lasso(alpha, fit_intercept=True)` on `columns` (one vector per feature):
/// centres the data, then `enet_coordinate_descent` (scikit-learn 1.9) from zero with
/// `alpha * n_samples` as the L1 weight, stopping when the largest update is at most `tol`
/// times the largest coefficient and the duality gap at most `tol * |y|^2`, or after 1000
/// sweeps. (Its gap-safe screening only skips coordinates that are provably zero.)
pub(super) fn lasso_cd(columns: &[Vec<f64>], y: &[f64], alpha: f64) -> Vec<f64> {
    let rows = y.len();
    let p = columns.len();
    let centre = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / rows.max(1) as f64;
        v.iter().map(|a| a - m).collect::<Vec<f64>>()
    };
    let x: Vec<Vec<f64>> = columns.iter().map(|c| centre(c)).collect();
    let y = centre(y);
    let l1 = alpha * rows as f64;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
    let norms: Vec<f64> = x.iter().map(|c| dot(c, c)).collect();
    let mut w = vec![0.0; p];
    let mut r = y.clone();
    let tol = TOL * dot(&y, &y);
    if duality_gap(&x, &y, &r, &w, l1) <= tol {
        return w;
    }
    for sweep in 0..MAX_ITER {
        let (mut w_max, mut d_w_max) = (0.0f64, 0.0f64);
        for j in 0..p {
            if norms[j] == 0.0 {
                continue;
            }
            let old = w[j];
            if old != 0.0 {
                r.iter_mut().zip(&x[j]).for_each(|(ri, xi)| *ri += old * xi);
            }
            let tmp = dot(&x[j], &r);
            w[j] = tmp.signum() * (tmp.abs() - l1).max(0.0) / norms[j];
            if w[j] != 0.0 {
                let new = w[j];
                r.iter_mut().zip(&x[j]).for_each(|(ri, xi)| *ri -= new * xi);
            }
            d_w_max = d_w_max.max((w[j] - old).abs());
            w_max = w_max.max(w[j].abs());
        }
        let settled = w_max == 0.0 || d_w_max / w_max <= TOL || sweep == MAX_ITER - 1;
        if settled && duality_gap(&x, &y, &r, &w, l1) <= tol {
            break;
        }
    }
    w
}

/// The Lasso's duality gap at `w` (residual `r`), as `enet_coordinate_descent` computes it.
fn duality_gap(x: &[Vec<f64>], y: &[f64], r: &[f64], w: &[f64], l1: f64) -> f64 {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
    let dual_norm = x.iter().map(|c| dot(c, r).abs()).fold(0.0f64, f64::max);
    let r_norm2 = dot(r, r);
    let (konst, mut gap) = if dual_norm > l1 {
        let k = l1 / dual_norm;
        (k, 0.5 * (r_norm2 + r_norm2 * k * k))
    } else {
        (1.0, r_norm2)
    };
    let l1_norm: f64 = w.iter().map(|v| v.abs()).sum();
    gap += l1 * l1_norm - konst * dot(r, y);
    gap
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn lasso_meets_its_optimality_conditions() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let masks = context_cite_masks(6, 64, &mut rng);
        let y: Vec<f64> = masks
            .iter()
            .map(|m| {
                2.0 * f64::from(u8::from(m[0])) - 0.5 * f64::from(u8::from(m[3]))
                    + 0.001 * f64::from(u8::from(m[5]))
            })
            .collect();
        let w = context_cite_weights(&masks, &y, 1);
        // A linear response is recovered up to the L1 shrinkage; the tiny effect is cut to 0.
        assert!((w[0] - 2.0).abs() < 0.05 && (w[3] + 0.5).abs() < 0.05, "{w:?}");
        assert_eq!(w[5], 0.0, "{w:?}");
        assert!(
            w[1].abs() < 0.02 && w[2].abs() < 0.02 && w[4].abs() < 0.02,
            "{w:?}"
        );
    }

    #[test]
    fn the_sequence_fit_divides_by_the_tokens_and_multiplies_back() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let masks = context_cite_masks(4, 32, &mut rng);
        let y: Vec<f64> = masks.iter().map(|m| 3.0 * f64::from(u8::from(m[1]))).collect();
        // With T tokens the penalty acts on y / T: a larger T shrinks the weight more.
        let w1 = context_cite_weights(&masks, &y, 1)[1];
        let w10 = context_cite_weights(&masks, &y, 10)[1];
        assert!(w1 > w10 && w10 > 2.5, "{w1} {w10}");
    }
}
