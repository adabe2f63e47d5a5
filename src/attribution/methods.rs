//! What the rest of the service needs to know about each method, in one table.
//!
//! A new method is a variant of [`Method`] (src/request.rs), a row in [`Method::facts`] and an
//! arm in [`super::attribute`]; the compiler points at the last two.

use crate::error::{Error, Result};
use crate::request::Method;

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MethodFacts {
    /// Draws random samples: `n_samples` applies, and one trial estimates its own standard
    /// errors. Exact methods blame the request's `method` when it needs too many sequences.
    pub samples: bool,
    /// `n_samples` when the request gives none (Captum's defaults); 1 for exact methods.
    pub default_n_samples: usize,
    /// Coalition evaluations of one trial, given the features and `n_samples` (saturating).
    pub evaluations: fn(n_features: usize, n_samples: usize) -> usize,
    /// Most features the method takes whatever the limits, when it has such a cap.
    pub feature_cap: Option<FeatureCap>,
    /// Gradient methods attribute through the model's gradients (`Scorer::gradients`) instead
    /// of coalitions; `None` for the perturbation methods.
    pub gradient: Option<GradientFacts>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct GradientFacts {
    /// Where on the way from the baseline to the input the gradients are taken.
    pub path: GradientPath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GradientPath {
    /// At the input only, against the zero embedding (gradient × input).
    Input,
    /// At the points of a quadrature rule on the straight path from the baseline tokens:
    /// takes `n_steps` (this many when the request gives none, Captum's) and `integration`.
    Rule { default_n_steps: usize },
    /// At `n_samples` uniformly random points of that path: a Monte Carlo estimate of the same
    /// integral, with standard errors from the points' spread.
    Sampled,
}

impl GradientPath {
    /// Starts from the baseline tokens (not the zero embedding), so each row has a
    /// convergence delta: its sum minus f(input) - f(baseline).
    pub(crate) fn starts_at_baseline(self) -> bool {
        self != GradientPath::Input
    }

    /// Takes `n_steps` and `integration`.
    pub(crate) fn takes_steps(self) -> bool {
        matches!(self, GradientPath::Rule { .. })
    }

    /// The request field that sets how many points the path has, if one does: to blame when
    /// there are too many gradients.
    pub(crate) fn points_field(self) -> Option<&'static str> {
        match self {
            GradientPath::Input => None,
            GradientPath::Rule { .. } => Some("n_steps"),
            GradientPath::Sampled => Some("n_samples"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FeatureCap {
    pub max: usize,
    /// Why, as the start of the error message.
    pub reason: &'static str,
    /// What to use instead, as the end of the error message.
    pub instead: &'static str,
}

/// Exact Shapley values enumerate 2^n coalitions.
const EXACT_SHAPLEY_CAP: FeatureCap = FeatureCap {
    max: 20,
    reason: "shapley_values is exact over all 2^n coalitions",
    instead: "use shapley_value_sampling, kernel_shap or context_cite, which sample, or \
              feature_ablation (leave-one-out, n + 1 prompts)",
};

impl Method {
    /// The method's name in requests (`integrated_gradients`).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The method's row of the table (Captum's defaults for the samples).
    pub(crate) fn facts(self) -> MethodFacts {
        match self {
            Method::FeatureAblation => MethodFacts {
                samples: false,
                default_n_samples: 1,
                evaluations: |n, _| n.saturating_add(1),
                feature_cap: None,
                gradient: None,
            },
            Method::ShapleyValues => MethodFacts {
                samples: false,
                default_n_samples: 1,
                evaluations: |n, _| 1usize.checked_shl(n as u32).unwrap_or(usize::MAX),
                feature_cap: Some(EXACT_SHAPLEY_CAP),
                gradient: None,
            },
            // n_samples permutations, each adding the features one by one to the empty
            // coalition.
            Method::ShapleyValueSampling => MethodFacts {
                samples: true,
                default_n_samples: 25,
                evaluations: |n, s| s.saturating_mul(n).saturating_add(1),
                feature_cap: None,
                gradient: None,
            },
            Method::Lime => MethodFacts {
                samples: true,
                default_n_samples: 50,
                evaluations: |_, s| s,
                feature_cap: None,
                gradient: None,
            },
            Method::KernelShap => MethodFacts {
                samples: true,
                default_n_samples: 25,
                evaluations: |_, s| s,
                feature_cap: None,
                gradient: None,
            },
            // ContextCite: n_samples random halves of the features, a Lasso on them.
            Method::ContextCite => MethodFacts {
                samples: true,
                default_n_samples: 64,
                evaluations: |_, s| s,
                feature_cap: None,
                gradient: None,
            },
            // One gradient per output token and point, summed over the embedding per token;
            // the points are not coalitions.
            Method::IntegratedGradients => MethodFacts {
                samples: false,
                default_n_samples: 1,
                evaluations: |_, _| 1,
                feature_cap: None,
                gradient: Some(GradientFacts {
                    path: GradientPath::Rule { default_n_steps: 50 },
                }),
            },
            Method::GradientXInput => MethodFacts {
                samples: false,
                default_n_samples: 1,
                evaluations: |_, _| 1,
                feature_cap: None,
                gradient: Some(GradientFacts {
                    path: GradientPath::Input,
                }),
            },
            // Captum's LayerGradientShap draws 5 points by default.
            Method::GradientShap => MethodFacts {
                samples: true,
                default_n_samples: 5,
                evaluations: |_, _| 1,
                feature_cap: None,
                gradient: Some(GradientFacts {
                    path: GradientPath::Sampled,
                }),
            },
        }
    }

    /// Fails when the method cannot take `n` features: past its cap, or past what fits in
    /// `max_sequences` (every evaluation costs at least one distinct sequence).
    pub(crate) fn check_features(self, n: usize, n_samples: usize, max_sequences: usize) -> Result<()> {
        let facts = self.facts();
        let Some(cap) = facts.feature_cap else {
            return Ok(());
        };
        let max = (0..=cap.max)
            .take_while(|&k| (facts.evaluations)(k, n_samples) <= max_sequences)
            .last()
            .unwrap_or(0);
        if n <= max {
            return Ok(());
        }
        Err(Error::too_large(
            "method",
            format!(
                "{} and allows at most {max} features here ({n} given); {}",
                cap.reason, cap.instead
            ),
        ))
    }
}
