//! LIME and Kernel SHAP with Captum's defaults: sample coalitions, weight them, fit a weighted
//! linear surrogate with an intercept; its coefficients are the attributions. Every output
//! column (sequence and each token) is fitted on the same samples. Standard errors come from a
//! bootstrap over the samples (no further evaluations).

use rand::seq::index::sample;
use rand::Rng;

use super::linear::{weighted_lasso, weighted_least_squares};
use super::{mean_and_stderr, Attribution, Coalition, Evaluator};
use crate::error::Result;

/// Captum's Lime: `SkLearnLasso(alpha=0.01)`.
pub(super) const LIME_ALPHA: f64 = 0.01;
/// Captum's Kernel SHAP weight of the empty and full coalitions.
pub(super) const KERNEL_INF_WEIGHT: f64 = 1_000_000.0;
const BOOTSTRAP: usize = 100;

fn as_row(c: &Coalition) -> Vec<f64> {
    c.iter().map(|&b| f64::from(u8::from(b))).collect()
}

/// Captum's default LIME similarity: exp(-d^2 / 2) with d the cosine distance between the
/// all-ones input and the sample (width 1).
pub(super) fn lime_weight(c: &Coalition) -> f64 {
    let n = c.len() as f64;
    let k = c.iter().filter(|&&b| b).count() as f64;
    let cos = if k == 0.0 { 0.0 } else { k / (n.sqrt() * k.sqrt()) };
    let d = 1.0 - cos;
    (-d * d / 2.0).exp()
}

/// LIME: `n_samples` coalitions with each feature present with probability 1/2, weighted by
/// [`lime_weight`], fitted by a weighted Lasso (alpha 0.01) per output column.
pub(crate) fn lime(ev: &mut dyn Evaluator, n_samples: usize, rng: &mut impl Rng) -> Result<Attribution> {
    let n = ev.n_features();
    let coalitions = lime_coalitions(n, n_samples, rng);
    let w: Vec<f64> = coalitions.iter().map(lime_weight).collect();
    let x: Vec<Vec<f64>> = coalitions.iter().map(as_row).collect();
    let y = ev.values(&coalitions)?;
    let fit = |rows: &[usize], start: Option<&Vec<Vec<f64>>>| -> Vec<Vec<f64>> {
        let xs: Vec<Vec<f64>> = rows.iter().map(|&i| x[i].clone()).collect();
        let ws: Vec<f64> = rows.iter().map(|&i| w[i]).collect();
        (0..y[0].len())
            .map(|o| {
                let ys: Vec<f64> = rows.iter().map(|&i| y[i][o]).collect();
                weighted_lasso(&xs, &ys, &ws, LIME_ALPHA, start.map(|s| s[o].as_slice()))
            })
            .collect()
    };
    let all: Vec<usize> = (0..n_samples).collect();
    let attr = fit(&all, None);
    // A warm-started Lasso takes a few sweeps.
    let reps = bootstrap_reps(n_samples * n * y[0].len() * 10);
    let stderr = bootstrap(&[], &all, reps, rng, |rows| fit(rows, Some(&attr)));
    Ok(Attribution { attr, stderr })
}

/// The coalitions [`lime`] draws: `n_samples`, each feature present with probability 1/2.
pub(super) fn lime_coalitions(n: usize, n_samples: usize, rng: &mut impl Rng) -> Vec<Coalition> {
    (0..n_samples)
        .map(|_| (0..n).map(|_| rng.random_bool(0.5)).collect())
        .collect()
}

/// The coalitions [`kernel_shap`] draws: the full and the empty coalition, then coalitions
/// whose size k is drawn with p(k) proportional to (n-1)/(k(n-k)) and whose members are
/// uniform.
pub(super) fn kernel_shap_coalitions(n: usize, n_samples: usize, rng: &mut impl Rng) -> Vec<Coalition> {
    let sizes: Vec<f64> = (1..n).map(|k| (n - 1) as f64 / (k * (n - k)) as f64).collect();
    let total: f64 = sizes.iter().sum();
    let mut coalitions = Vec::with_capacity(n_samples);
    for s in 0..n_samples {
        if s < 2 || n < 2 {
            coalitions.push(vec![s % 2 == 0; n]);
            continue;
        }
        let mut u = rng.random::<f64>() * total;
        let mut k = n - 1;
        for (i, p) in sizes.iter().enumerate() {
            if u < *p {
                k = i + 1;
                break;
            }
            u -= p;
        }
        let mut c = vec![false; n];
        for i in sample(rng, n, k) {
            c[i] = true;
        }
        coalitions.push(c);
    }
    coalitions
}

/// Kernel SHAP: the coalitions of [`kernel_shap_coalitions`], the full and the empty one
/// weighted 10^6 and the others 1, fitted by weighted least squares.
pub(crate) fn kernel_shap(
    ev: &mut dyn Evaluator,
    n_samples: usize,
    rng: &mut impl Rng,
) -> Result<Attribution> {
    let n = ev.n_features();
    let coalitions = kernel_shap_coalitions(n, n_samples, rng);
    let w: Vec<f64> = coalitions
        .iter()
        .map(|c| {
            let k = c.iter().filter(|&&b| b).count();
            if k == 0 || k == n {
                KERNEL_INF_WEIGHT
            } else {
                1.0
            }
        })
        .collect();
    let x: Vec<Vec<f64>> = coalitions.iter().map(as_row).collect();
    let y = ev.values(&coalitions)?;
    let fit = |rows: &[usize]| -> Vec<Vec<f64>> {
        let xs: Vec<Vec<f64>> = rows.iter().map(|&i| x[i].clone()).collect();
        let ys: Vec<Vec<f64>> = rows.iter().map(|&i| y[i].clone()).collect();
        let ws: Vec<f64> = rows.iter().map(|&i| w[i]).collect();
        weighted_least_squares(&xs, &ys, &ws)
    };
    let fixed: Vec<usize> = (0..n_samples.min(2)).collect();
    let random: Vec<usize> = (fixed.len()..n_samples).collect();
    let all: Vec<usize> = (0..n_samples).collect();
    let attr = fit(&all);
    let reps = bootstrap_reps(n_samples * n * (n + y[0].len()) + 20 * n * n * n);
    let stderr = bootstrap(&fixed, &random, reps, rng, fit);
    Ok(Attribution { attr, stderr })
}

/// Resamples for the bootstrap given the cost of one fit (in multiply-adds): up to 100 within
/// a budget of about a second's arithmetic, none when fewer than 20 would fit.
fn bootstrap_reps(cost: usize) -> usize {
    const BUDGET: usize = 2_000_000_000;
    let reps = BUDGET / cost.max(1);
    if reps < 20 {
        0
    } else {
        reps.min(BOOTSTRAP)
    }
}

/// Standard errors by refitting on `reps` resamples (with replacement) of `random` rows,
/// `fixed` rows always kept. None when there are fewer than two random rows.
fn bootstrap(
    fixed: &[usize],
    random: &[usize],
    reps: usize,
    rng: &mut impl Rng,
    fit: impl Fn(&[usize]) -> Vec<Vec<f64>>,
) -> Option<Vec<Vec<f64>>> {
    if random.len() < 2 || reps < 2 {
        return None;
    }
    let fits: Vec<Vec<Vec<f64>>> = (0..reps)
        .map(|_| {
            let mut rows = fixed.to_vec();
            rows.extend((0..random.len()).map(|_| random[rng.random_range(0..random.len())]));
            fit(&rows)
        })
        .collect();
    let refs: Vec<&Vec<Vec<f64>>> = fits.iter().collect();
    // The spread of the bootstrap fits (not of their mean) estimates the standard error.
    let (_, se_of_mean) = mean_and_stderr(&refs);
    let k = reps as f64;
    Some(
        se_of_mean
            .into_iter()
            .map(|r| r.into_iter().map(|s| s * k.sqrt()).collect())
            .collect(),
    )
}
