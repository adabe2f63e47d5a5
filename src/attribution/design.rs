//! The random design of the sampling methods (permutations, coalitions) for a seed, drawn by
//! the very functions the methods draw it with, so an independent implementation (e.g.
//! `scripts/reference/remote_reference.py --design`) can recompute a request's numbers.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::context_cite::context_cite_masks;
use super::shapley::permutations;
use super::surrogate::{kernel_shap_coalitions, lime_coalitions};
use super::Coalition;
use crate::error::{Error, Result};
use crate::request::Method;

/// What a sampling method evaluates, as drawn for one seed. Serialized as the reference
/// script's `--design` JSON: `{"permutations": [[feature, ...], ...]}` or
/// `{"coalitions": [[present, ...], ...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingDesign {
    /// Shapley value sampling: each permutation adds the features in this order to the
    /// empty coalition.
    Permutations(Vec<Vec<usize>>),
    /// LIME, Kernel SHAP, ContextCite: the coalitions evaluated, in order (`true`: the
    /// feature keeps its value).
    Coalitions(Vec<Vec<bool>>),
}

/// The random stream of a request's method: ChaCha8 seeded with the request's `seed`.
pub(crate) fn method_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// The design `method` draws for a request with `n_features` features, `n_samples` samples
/// and `seed` (the first trial's, which is the whole design with `num_trials` 1). An error
/// naming `method` for a method that draws nothing.
pub fn sampling_design(
    method: Method,
    n_features: usize,
    n_samples: usize,
    seed: u64,
) -> Result<SamplingDesign> {
    draw(method, n_features, n_samples, &mut method_rng(seed))
}

fn draw(method: Method, n: usize, n_samples: usize, rng: &mut ChaCha8Rng) -> Result<SamplingDesign> {
    let coalitions = |c: Vec<Coalition>| SamplingDesign::Coalitions(c);
    Ok(match method {
        Method::ShapleyValueSampling => SamplingDesign::Permutations(permutations(n, n_samples, rng)),
        Method::Lime => coalitions(lime_coalitions(n, n_samples, rng)),
        Method::KernelShap => coalitions(kernel_shap_coalitions(n, n_samples, rng)),
        Method::ContextCite => coalitions(context_cite_masks(n, n_samples, rng)),
        _ => {
            return Err(Error::invalid(
                "method",
                format!("{} draws no random design", method.name()),
            ))
        }
    })
}
