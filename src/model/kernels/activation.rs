//! Activation functions by their Hugging Face names: as candle ops (any device, with a
//! backward pass) and as scalar functions for the fused CPU kernels.

use candle_core::{Result, Tensor};

/// An activation function, by its Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` / `swish`.
    Silu,
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`).
    GeluTanh,
    /// exact erf GELU (`gelu`).
    GeluErf,
    /// ReLU (`relu`).
    Relu,
}

impl Activation {
    /// The activation a config's `hidden_act` / `activation_function` names.
    pub(crate) fn from_name(name: &str) -> Option<Activation> {
        Some(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }

    /// Applied with candle ops (any device and dtype, with backward).
    pub(crate) fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Silu => x.silu(),
            Activation::GeluTanh => x.gelu(),
            Activation::GeluErf => x.gelu_erf(),
            Activation::Relu => x.relu(),
        }
    }

    /// `act(x)` and `act'(x)` (the gated MLP's backward pass).
    #[inline]
    pub(crate) fn value_and_slope(self, x: f32) -> (f32, f32) {
        match self {
            Activation::Silu => {
                let s = 1.0 / (1.0 + (-x).exp());
                (x * s, s * (1.0 + x * (1.0 - s)))
            }
            Activation::GeluTanh => {
                // x * s with s = sigmoid(2u): s + x s (1 - s) 2u'.
                let u = GELU_K * (x + 0.044_715 * x * x * x);
                let s = 1.0 / (1.0 + (-2.0 * u).exp());
                let du = GELU_K * (1.0 + 3.0 * 0.044_715 * x * x);
                (x * s, s + x * s * (1.0 - s) * 2.0 * du)
            }
            Activation::GeluErf => {
                // x Phi(x): Phi(x) + x phi(x).
                let x = f64::from(x);
                let cdf = 0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                ((x * cdf) as f32, (cdf + x * pdf) as f32)
            }
            Activation::Relu if x > 0.0 => (x, 1.0),
            Activation::Relu => (0.0, 0.0),
        }
    }

    #[inline]
    pub(crate) fn scalar(self, x: f32) -> f32 {
        match self {
            Activation::Silu => x / (1.0 + (-x).exp()),
            Activation::GeluTanh => gelu_tanh(x),
            Activation::GeluErf => gelu_erf(x),
            Activation::Relu => x.max(0.0),
        }
    }
}

/// sqrt(2/pi), of the tanh GELU.
const GELU_K: f32 = 0.797_884_6;

/// `gelu_new(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u)`, `u = sqrt(2/pi) (x + 0.044715 x^3)`:
/// one `exp` instead of a `tanh`.
#[inline]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    let u = GELU_K * (x + 0.044_715 * x * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

#[inline]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    (0.5 * x as f64 * (1.0 + candle_core::cpu::erf::erf_f64(x as f64 / std::f64::consts::SQRT_2))) as f32
}
