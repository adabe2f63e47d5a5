//! Shapley values: exact over the 2^n coalitions, and Captum's permutation sampling.

use rand::seq::SliceRandom;
use rand::Rng;

use super::{mean_and_stderr, Attribution, Coalition, Evaluator};
use crate::error::Result;
use crate::request::Method;

fn from_bits(bits: usize, n: usize) -> Coalition {
    (0..n).map(|i| bits >> i & 1 == 1).collect()
}

/// Exact Shapley values: `phi_i = sum_{S without i} |S|!(n-|S|-1)!/n! (v(S+i) - v(S))`,
/// from one evaluation of each of the 2^n coalitions.
pub(crate) fn shapley_values(ev: &mut dyn Evaluator) -> Result<Attribution> {
    let n = ev.n_features();
    Method::ShapleyValues.check_features(n, 1, usize::MAX)?;
    let coalitions: Vec<Coalition> = (0..1usize << n).map(|b| from_bits(b, n)).collect();
    let v = ev.values(&coalitions)?;
    let outs = ev.n_outputs();
    // weight[s] = s! (n-s-1)! / n! = 1 / (n * C(n-1, s))
    let mut weight = vec![0.0; n];
    let mut binom = 1.0f64;
    for (s, w) in weight.iter_mut().enumerate() {
        *w = 1.0 / (n as f64 * binom);
        binom = binom * (n - 1 - s) as f64 / (s + 1) as f64;
    }
    let mut attr = vec![vec![0.0; n]; outs];
    for (bits, vs) in v.iter().enumerate() {
        let size = bits.count_ones() as usize;
        for i in (0..n).filter(|i| bits >> i & 1 == 0) {
            let with = &v[bits | 1 << i];
            let w = weight[size];
            for o in 0..outs {
                attr[o][i] += w * (with[o] - vs[o]);
            }
        }
    }
    Ok(Attribution { attr, stderr: None })
}

/// The permutations [`shapley_value_sampling`] draws: `n_samples` uniform shuffles of the
/// `n` feature indices.
pub(super) fn permutations(n: usize, n_samples: usize, rng: &mut impl Rng) -> Vec<Vec<usize>> {
    (0..n_samples)
        .map(|_| {
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(rng);
            perm
        })
        .collect()
}

/// Captum's ShapleyValueSampling: `n_samples` random permutations; each adds the features one
/// by one to the empty coalition (evaluated once) and credits each feature with the change it
/// makes. Standard errors come from the spread across permutations.
pub(crate) fn shapley_value_sampling(
    ev: &mut dyn Evaluator,
    n_samples: usize,
    rng: &mut impl Rng,
) -> Result<Attribution> {
    let n = ev.n_features();
    let perms = permutations(n, n_samples, rng);
    let mut coalitions = vec![vec![false; n]];
    for perm in &perms {
        let mut c = vec![false; n];
        for &f in perm {
            c[f] = true;
            coalitions.push(c.clone());
        }
    }
    let v = ev.values(&coalitions)?;
    let outs = ev.n_outputs();
    let mut contributions = Vec::with_capacity(n_samples);
    for (p, perm) in perms.iter().enumerate() {
        let mut m = vec![vec![0.0; n]; outs];
        let mut prev = &v[0];
        for (k, &f) in perm.iter().enumerate() {
            let cur = &v[1 + p * n + k];
            for o in 0..outs {
                m[o][f] = cur[o] - prev[o];
            }
            prev = cur;
        }
        contributions.push(m);
    }
    let refs: Vec<&Vec<Vec<f64>>> = contributions.iter().collect();
    let (attr, stderr) = mean_and_stderr(&refs);
    Ok(Attribution {
        attr,
        stderr: (n_samples > 1).then_some(stderr),
    })
}
