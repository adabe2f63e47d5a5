//! Quadrature rules of integrated gradients: where along the path from the baseline (0) to the
//! input (1) the gradient is taken, and with what weight. Captum's
//! `captum.attr._utils.approximation_methods`, number for number: the Riemann rules' points are
//! `torch.linspace` in f32 and the trapezoid's weights sum to (n - 1) / n, as Captum's do.

use crate::error::{Error, Result};
use crate::request::Integration;

/// Points `alphas` in [0, 1] and their `weights`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub alphas: Vec<f64>,
    pub weights: Vec<f64>,
}

impl Integration {
    /// The rule's name in requests (`gausslegendre`, `riemann_trapezoid`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Integration::Gausslegendre => "gausslegendre",
            Integration::RiemannTrapezoid => "riemann_trapezoid",
            Integration::RiemannLeft => "riemann_left",
            Integration::RiemannRight => "riemann_right",
            Integration::RiemannMiddle => "riemann_middle",
        }
    }

    /// The rule with `n` points. The Riemann rules need at least two (as Captum's).
    pub fn rule(self, n: usize) -> Result<Rule> {
        if n == 0 || (n < 2 && self != Integration::Gausslegendre) {
            return Err(Error::invalid(
                "n_steps",
                format!(
                    "{} needs at least {} steps",
                    self.name(),
                    if n == 0 { 1 } else { 2 }
                ),
            ));
        }
        let k = n as f64;
        let (alphas, weights) = match self {
            Integration::Gausslegendre => gauss_legendre(n),
            Integration::RiemannTrapezoid => {
                let mut w = vec![1.0 / k; n];
                w[0] /= 2.0;
                w[n - 1] /= 2.0;
                (linspace_f32(0.0, 1.0, n), w)
            }
            Integration::RiemannLeft => (linspace_f32(0.0, 1.0 - 1.0 / k, n), vec![1.0 / k; n]),
            Integration::RiemannRight => (linspace_f32(1.0 / k, 1.0, n), vec![1.0 / k; n]),
            Integration::RiemannMiddle => (
                linspace_f32(1.0 / (2.0 * k), 1.0 - 1.0 / (2.0 * k), n),
                vec![1.0 / k; n],
            ),
        };
        Ok(Rule { alphas, weights })
    }
}

/// `torch.linspace(start, end, n)` in f32 (its default dtype): the first half counts up from
/// `start`, the second down from `end`.
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f64> {
    let (a, b) = (start as f32, end as f32);
    let step = (b - a) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            let v = if i < half {
                a + step * i as f32
            } else {
                b - step * (n - 1 - i) as f32
            };
            f64::from(v)
        })
        .collect()
}

/// Gauss–Legendre nodes and weights on [0, 1], ascending (numpy's `leggauss` rescaled):
/// Newton's method on the Legendre polynomial from Tricomi's initial guesses.
fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            let (p, d) = legendre(n, x);
            dp = d;
            let dx = p / d;
            x -= dx;
            if dx.abs() < 1e-15 {
                break;
            }
        }
        let (_, d) = legendre(n, x);
        dp = if d != 0.0 { d } else { dp };
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        // x is the i-th largest root; -x its mirror.
        nodes[n - 1 - i] = x;
        nodes[i] = -x;
        weights[n - 1 - i] = w;
        weights[i] = w;
    }
    let alphas = nodes.iter().map(|x| 0.5 * (1.0 + x)).collect();
    let weights = weights.iter().map(|w| 0.5 * w).collect();
    (alphas, weights)
}

/// P_n(x) and P_n'(x) by the three-term recurrence.
fn legendre(n: usize, x: f64) -> (f64, f64) {
    let (mut p0, mut p1) = (1.0, x);
    if n == 0 {
        return (1.0, 0.0);
    }
    for k in 2..=n {
        let k = k as f64;
        let p2 = ((2.0 * k - 1.0) * x * p1 - (k - 1.0) * p0) / k;
        p0 = p1;
        p1 = p2;
    }
    let d = n as f64 * (x * p1 - p0) / (x * x - 1.0);
    (p1, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_matches_numpy() {
        // numpy.polynomial.legendre.leggauss(3), rescaled to [0, 1].
        let r = Integration::Gausslegendre.rule(3).unwrap();
        let x = (0.6f64).sqrt();
        let want_a = [0.5 * (1.0 - x), 0.5, 0.5 * (1.0 + x)];
        let want_w = [5.0 / 18.0, 8.0 / 18.0, 5.0 / 18.0];
        for i in 0..3 {
            assert!((r.alphas[i] - want_a[i]).abs() < 1e-14, "{:?}", r.alphas);
            assert!((r.weights[i] - want_w[i]).abs() < 1e-14, "{:?}", r.weights);
        }
        let one = Integration::Gausslegendre.rule(1).unwrap();
        assert_eq!(
            one,
            Rule {
                alphas: vec![0.5],
                weights: vec![1.0]
            }
        );
        // 50 points integrate x^9 exactly; weights sum to 1.
        let r = Integration::Gausslegendre.rule(50).unwrap();
        let sum: f64 = r.weights.iter().sum();
        let x9: f64 = r.alphas.iter().zip(&r.weights).map(|(a, w)| w * a.powi(9)).sum();
        assert!(
            (sum - 1.0).abs() < 1e-12 && (x9 - 0.1).abs() < 1e-12,
            "{sum} {x9}"
        );
        assert!(r.alphas.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn riemann_rules_are_captums() {
        let t = Integration::RiemannTrapezoid.rule(5).unwrap();
        assert_eq!(t.alphas, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(t.weights, vec![0.1, 0.2, 0.2, 0.2, 0.1]);
        let sum: f64 = Integration::RiemannTrapezoid
            .rule(20)
            .unwrap()
            .weights
            .iter()
            .sum();
        assert!((sum - 19.0 / 20.0).abs() < 1e-12);
        assert_eq!(
            Integration::RiemannLeft.rule(4).unwrap().alphas,
            vec![0.0, 0.25, 0.5, 0.75]
        );
        assert_eq!(
            Integration::RiemannRight.rule(4).unwrap().alphas,
            vec![0.25, 0.5, 0.75, 1.0]
        );
        let m = Integration::RiemannMiddle.rule(4).unwrap();
        assert_eq!(m.alphas, vec![0.125, 0.375, 0.625, 0.875]);
        assert_eq!(m.weights, vec![0.25; 4]);
    }

    #[test]
    fn too_few_steps_name_n_steps() {
        for rule in [Integration::Gausslegendre, Integration::RiemannMiddle] {
            assert_eq!(rule.rule(0).unwrap_err().field(), Some("n_steps"));
        }
        let e = Integration::RiemannLeft.rule(1).unwrap_err();
        assert_eq!(e.field(), Some("n_steps"));
        assert!(e.to_string().contains("at least 2"), "{e}");
    }
}
