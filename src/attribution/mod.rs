//! Attribution methods. A method asks an [`Evaluator`] for the values of coalitions (which
//! features are present) and combines them; it never sees tokens or tensors.
//!
//! A coalition's value is a vector: `[sequence value, one value per output token]`. Every method
//! is a fixed linear map of these values (except LIME's Lasso, fitted per column), so sequence
//! and per-token attributions come from the same evaluations.

mod context_cite;
mod design;
pub(crate) mod integration;
pub(crate) mod linear;
mod methods;
mod shapley;
mod surrogate;

use rand::Rng;

use crate::error::{Error, Result};
use crate::request::Method;
pub(crate) use context_cite::context_cite;
pub use context_cite::{context_cite_masks, context_cite_weights};
pub(crate) use design::method_rng;
pub use design::{sampling_design, SamplingDesign};
pub(crate) use methods::{GradientFacts, GradientPath, MethodFacts};
pub(crate) use shapley::{shapley_value_sampling, shapley_values};
pub(crate) use surrogate::{kernel_shap, lime};

/// `coalition[i]` is true when feature i keeps its value.
pub(crate) type Coalition = Vec<bool>;

/// Answers the value of coalitions.
pub(crate) trait Evaluator {
    fn n_features(&self) -> usize;
    /// Length of every value vector.
    fn n_outputs(&self) -> usize;
    /// Values of `coalitions`, in order (one vector of `n_outputs()` each).
    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<Vec<f64>>>;
}

/// Attributions: `attr[o][f]` for output o (0 = sequence, then target tokens) and feature f.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attribution {
    pub attr: Vec<Vec<f64>>,
    /// Standard errors, same shape, when the result is random.
    pub stderr: Option<Vec<Vec<f64>>>,
}

/// Runs `method` once.
pub(crate) fn attribute(
    method: Method,
    ev: &mut dyn Evaluator,
    n_samples: usize,
    rng: &mut impl Rng,
) -> Result<Attribution> {
    if ev.n_features() == 0 {
        return Err(Error::invalid("template", "there are no features to attribute"));
    }
    match method {
        Method::FeatureAblation => feature_ablation(ev),
        Method::ShapleyValues => shapley_values(ev),
        Method::ShapleyValueSampling => shapley_value_sampling(ev, n_samples, rng),
        Method::Lime => lime(ev, n_samples, rng),
        Method::KernelShap => kernel_shap(ev, n_samples, rng),
        Method::ContextCite => context_cite(ev, n_samples, rng),
        // Their numbers come from the model's gradients, below the scorer (src/run/gradient.rs).
        Method::IntegratedGradients | Method::GradientXInput | Method::GradientShap => {
            Err(Error::Internal(format!("{method:?} takes no coalitions")))
        }
    }
}

/// Runs `method` `trials` times and averages. With more than one trial the standard error is
/// the spread across trials; with one it is the method's own estimate (sampling methods).
pub(crate) fn attribute_trials(
    method: Method,
    ev: &mut dyn Evaluator,
    n_samples: usize,
    trials: usize,
    rng: &mut impl Rng,
) -> Result<Attribution> {
    let mut runs = Vec::with_capacity(trials);
    for _ in 0..trials.max(1) {
        runs.push(attribute(method, ev, n_samples, rng)?);
    }
    if runs.len() == 1 {
        return Ok(runs.remove(0));
    }
    let rows: Vec<&Vec<Vec<f64>>> = runs.iter().map(|r| &r.attr).collect();
    let (mean, stderr) = mean_and_stderr(&rows);
    Ok(Attribution {
        attr: mean,
        stderr: Some(stderr),
    })
}

/// Element-wise mean and standard error of the mean of same-shaped matrices.
pub(crate) fn mean_and_stderr(samples: &[&Vec<Vec<f64>>]) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let k = samples.len() as f64;
    let shape = samples[0];
    let mut mean: Vec<Vec<f64>> = shape.iter().map(|r| vec![0.0; r.len()]).collect();
    for s in samples {
        for (m, r) in mean.iter_mut().zip(s.iter()) {
            for (a, b) in m.iter_mut().zip(r) {
                *a += b / k;
            }
        }
    }
    let mut se: Vec<Vec<f64>> = shape.iter().map(|r| vec![0.0; r.len()]).collect();
    if samples.len() > 1 {
        for s in samples {
            for ((e, m), r) in se.iter_mut().zip(&mean).zip(s.iter()) {
                for ((a, mu), b) in e.iter_mut().zip(m).zip(r) {
                    *a += (b - mu) * (b - mu);
                }
            }
        }
        for e in se.iter_mut().flatten() {
            *e = (*e / (k - 1.0) / k).sqrt();
        }
    }
    (mean, se)
}

/// Feature ablation (Captum's sign): `attr_i = v(all) - v(all but i)`.
pub(crate) fn feature_ablation(ev: &mut dyn Evaluator) -> Result<Attribution> {
    let n = ev.n_features();
    let mut coalitions = vec![vec![true; n]];
    for i in 0..n {
        let mut c = vec![true; n];
        c[i] = false;
        coalitions.push(c);
    }
    let v = ev.values(&coalitions)?;
    let attr = (0..ev.n_outputs())
        .map(|o| (0..n).map(|i| v[0][o] - v[1 + i][o]).collect())
        .collect();
    Ok(Attribution { attr, stderr: None })
}

#[cfg(test)]
mod tests;
