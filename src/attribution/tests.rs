//! Closed-form games with known Shapley values.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// A game over `n` features with `tokens` per-token outputs; the sequence value is their sum.
struct Game<F: Fn(&[bool]) -> Vec<f64>> {
    n: usize,
    tokens: usize,
    f: F,
    calls: usize,
}

impl<F: Fn(&[bool]) -> Vec<f64>> Evaluator for Game<F> {
    fn n_features(&self) -> usize {
        self.n
    }
    fn n_outputs(&self) -> usize {
        self.tokens + 1
    }
    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<Vec<f64>>> {
        self.calls += coalitions.len();
        Ok(coalitions
            .iter()
            .map(|c| {
                let t = (self.f)(c);
                let mut v = vec![t.iter().sum()];
                v.extend(t);
                v
            })
            .collect())
    }
}

fn game<F: Fn(&[bool]) -> Vec<f64>>(n: usize, tokens: usize, f: F) -> Game<F> {
    Game {
        n,
        tokens,
        f,
        calls: 0,
    }
}

fn x(c: &[bool], i: usize) -> f64 {
    f64::from(u8::from(c[i]))
}

/// Token 0: additive 1, -2, 0.5, 0 (feature 3 is a dummy); token 1: additive 0.25, 0, 0, 0 plus 3.
fn additive(c: &[bool]) -> Vec<f64> {
    vec![x(c, 0) - 2.0 * x(c, 1) + 0.5 * x(c, 2), 3.0 + 0.25 * x(c, 0)]
}
const ADDITIVE: [[f64; 4]; 3] = [
    [1.25, -2.0, 0.5, 0.0],
    [1.0, -2.0, 0.5, 0.0],
    [0.25, 0.0, 0.0, 0.0],
];

/// Pairwise and triple interactions: v = 0.3 x0 + 1.2 x0 x1 - 0.9 x1 x2 + 2.4 x0 x1 x2 (x3 dummy).
/// Shapley: each pair term splits in half, the triple in thirds.
fn interacting(c: &[bool]) -> Vec<f64> {
    let (a, b, d) = (x(c, 0), x(c, 1), x(c, 2));
    vec![0.3 * a + 1.2 * a * b - 0.9 * b * d + 2.4 * a * b * d, -a * d]
}
fn interacting_exact() -> Vec<Vec<f64>> {
    let t0 = vec![0.3 + 0.6 + 0.8, 0.6 - 0.45 + 0.8, -0.45 + 0.8, 0.0];
    let t1 = vec![-0.5, 0.0, -0.5, 0.0];
    let seq = t0.iter().zip(&t1).map(|(a, b)| a + b).collect();
    vec![seq, t0, t1]
}

fn assert_close(a: &[Vec<f64>], b: &[Vec<f64>], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (ra, rb) in a.iter().zip(b) {
        for (x, y) in ra.iter().zip(rb) {
            assert!((x - y).abs() <= tol, "{a:?}\n!=\n{b:?}\n(tol {tol})");
        }
    }
}

fn max_err(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn exact_shapley_of_additive_and_interacting_games() {
    let sv = shapley_values(&mut game(4, 2, additive)).unwrap();
    assert_close(&sv.attr, &ADDITIVE.map(|r| r.to_vec()), 1e-12);
    let mut g = game(4, 2, interacting);
    let sv = shapley_values(&mut g).unwrap();
    assert_close(&sv.attr, &interacting_exact(), 1e-12);
    assert_eq!(g.calls, 16, "2^n coalitions, not n * n! permutations");
    assert!(sv.stderr.is_none());
}

#[test]
fn feature_ablation_is_full_minus_all_but_one() {
    let fa = feature_ablation(&mut game(4, 2, additive)).unwrap();
    assert_close(&fa.attr, &ADDITIVE.map(|r| r.to_vec()), 1e-12);
    // Interacting: v(all) - v(all but i).
    let fa = feature_ablation(&mut game(4, 2, interacting)).unwrap();
    let t0 = [0.3 + 1.2 + 2.4, 1.2 - 0.9 + 2.4, -0.9 + 2.4, 0.0];
    let t1 = [-1.0, 0.0, -1.0, 0.0];
    assert_close(&fa.attr[1..], &[t0.to_vec(), t1.to_vec()], 1e-12);
}

/// A game with a random value for every coalition.
fn random_game(n: usize, tokens: usize, seed: u64) -> impl Fn(&[bool]) -> Vec<f64> {
    let mut r = rng(seed);
    let table: Vec<Vec<f64>> = (0..1usize << n)
        .map(|_| (0..tokens).map(|_| r.random_range(-3.0..3.0)).collect())
        .collect();
    move |c: &[bool]| {
        let bits = c
            .iter()
            .enumerate()
            .fold(0usize, |b, (i, &p)| b | (usize::from(p) << i));
        table[bits].clone()
    }
}

#[test]
fn efficiency_per_token_and_for_the_sequence() {
    for seed in 0..5 {
        let f = random_game(5, 3, seed);
        let full = f(&[true; 5]);
        let none = f(&[false; 5]);
        let mut gap: Vec<f64> = full.iter().zip(&none).map(|(a, b)| a - b).collect();
        gap.insert(0, gap.iter().sum());
        let mut g = game(5, 3, &f);
        let sv = shapley_values(&mut g).unwrap();
        let svs = shapley_value_sampling(&mut g, 7, &mut rng(seed)).unwrap();
        let ks = kernel_shap(&mut g, 40, &mut rng(seed)).unwrap();
        for a in [&sv, &svs] {
            for (row, want) in a.attr.iter().zip(&gap) {
                assert!((row.iter().sum::<f64>() - want).abs() < 1e-9, "{row:?} vs {want}");
            }
        }
        // Kernel SHAP enforces it through the 10^6 weights: nearly exact.
        for (row, want) in ks.attr.iter().zip(&gap) {
            assert!((row.iter().sum::<f64>() - want).abs() < 1e-4, "{row:?} vs {want}");
        }
        // Linear in the outputs: the sequence row is the sum of the token rows.
        for a in [&sv, &svs, &ks] {
            for f in 0..5 {
                let s: f64 = a.attr[1..].iter().map(|r| r[f]).sum();
                assert!((a.attr[0][f] - s).abs() < 1e-6);
            }
        }
    }
}

#[test]
fn symmetry_and_dummy() {
    // Features 0 and 2 are exchangeable; feature 3 never matters.
    let f = |c: &[bool]| vec![(x(c, 0) + x(c, 2)).powi(2) * (1.0 + x(c, 1)) - x(c, 1)];
    let sv = shapley_values(&mut game(4, 1, f)).unwrap();
    assert!((sv.attr[1][0] - sv.attr[1][2]).abs() < 1e-12);
    assert!(sv.attr[1][3].abs() < 1e-12);
    let mut g = game(4, 1, f);
    let svs = shapley_value_sampling(&mut g, 50, &mut rng(1)).unwrap();
    assert_eq!(
        svs.attr[1][3], 0.0,
        "a dummy gets exactly zero in every permutation"
    );
    let fa = feature_ablation(&mut game(4, 1, f)).unwrap();
    assert_eq!(fa.attr[1][3], 0.0);
    let lime = lime(&mut game(4, 1, additive), 200, &mut rng(2)).unwrap();
    assert_eq!(lime.attr[1][3], 0.0, "the Lasso zeroes a feature with no effect");
}

#[test]
fn shapley_value_sampling_converges_with_standard_errors() {
    let exact = interacting_exact();
    let mut errs = Vec::new();
    for n_samples in [10, 100, 2000] {
        let a = shapley_value_sampling(&mut game(4, 2, interacting), n_samples, &mut rng(7)).unwrap();
        let se = a.stderr.as_ref().unwrap();
        for ((r, e), s) in a.attr.iter().zip(&exact).zip(se) {
            for ((v, w), s) in r.iter().zip(e).zip(s) {
                assert!((v - w).abs() <= 5.0 * s + 1e-12, "{v} vs {w}, stderr {s}");
            }
        }
        errs.push(max_err(&a.attr, &exact));
    }
    assert!(errs[2] < errs[0] && errs[2] < 0.05, "{errs:?}");
}

#[test]
fn kernel_shap_converges_to_exact_shapley_on_an_interacting_game() {
    let exact = interacting_exact();
    let small = kernel_shap(&mut game(4, 2, interacting), 20, &mut rng(3)).unwrap();
    let big = kernel_shap(&mut game(4, 2, interacting), 20_000, &mut rng(3)).unwrap();
    let (e_small, e_big) = (max_err(&small.attr, &exact), max_err(&big.attr, &exact));
    assert!(e_big < 0.05 && e_big < e_small / 10.0, "{e_small} -> {e_big}");
    let se = big.stderr.unwrap();
    for ((r, e), s) in big.attr.iter().zip(&exact).zip(&se) {
        for ((v, w), s) in r.iter().zip(e).zip(s) {
            assert!(
                (v - w).abs() <= 5.0 * s + 1e-9 && *s < 0.03,
                "{v} vs {w}, stderr {s}"
            );
        }
    }
    // An additive game is fitted exactly from any sample.
    let add = kernel_shap(&mut game(4, 2, additive), 25, &mut rng(4)).unwrap();
    assert_close(&add.attr, &ADDITIVE.map(|r| r.to_vec()), 1e-6);
}

#[test]
fn lime_converges_on_an_additive_game() {
    let exact = ADDITIVE.map(|r| r.to_vec());
    let mut errs = Vec::new();
    for n_samples in [12, 100, 5000] {
        let a = lime(&mut game(4, 2, additive), n_samples, &mut rng(5)).unwrap();
        errs.push(max_err(&a.attr, &exact));
    }
    // Captum's Lasso (alpha 0.01) shrinks each coefficient by about alpha / Var(x) = 0.04.
    assert!(errs[2] < 0.045, "{errs:?}");
    let a = lime(&mut game(4, 2, additive), 5000, &mut rng(5)).unwrap();
    for (r, e) in a.attr.iter().zip(&exact) {
        for (v, w) in r.iter().zip(e) {
            assert!(v.abs() <= w.abs() + 1e-9, "shrinks towards zero: {v} vs {w}");
        }
    }
    // Without the penalty it is the weighted least-squares fit, exact on an additive game.
    let x: Vec<Vec<f64>> = (0..16u32)
        .map(|m| (0..4).map(|j| f64::from(m >> j & 1)).collect())
        .collect();
    let y: Vec<f64> = x.iter().map(|r| r[0] - 2.0 * r[1] + 0.5 * r[2]).collect();
    let w: Vec<f64> = x
        .iter()
        .map(|r| surrogate_weight(&r.iter().map(|&v| v > 0.5).collect::<Vec<_>>()))
        .collect();
    let c = linear::weighted_lasso(&x, &y, &w, 0.0, None);
    assert_close(&[c], &[vec![1.0, -2.0, 0.5, 0.0]], 1e-9);
}

fn surrogate_weight(c: &[bool]) -> f64 {
    surrogate::lime_weight(&c.to_vec())
}

#[test]
fn lime_weights_follow_captum_cosine_kernel() {
    // All present: distance 0; none present: cosine similarity 0, distance 1.
    assert!((surrogate_weight(&[true; 4]) - 1.0).abs() < 1e-15);
    assert!((surrogate_weight(&[false; 4]) - (-0.5f64).exp()).abs() < 1e-15);
    // One of four present: cos = 1/2.
    assert!((surrogate_weight(&[true, false, false, false]) - (-0.125f64).exp()).abs() < 1e-15);
}

#[test]
fn sampling_is_reproducible_per_seed() {
    type M = fn(&mut dyn Evaluator, usize, &mut ChaCha8Rng) -> Result<Attribution>;
    let methods: [M; 3] = [
        |e, n, r| shapley_value_sampling(e, n, r),
        |e, n, r| lime(e, n, r),
        |e, n, r| kernel_shap(e, n, r),
    ];
    for m in methods {
        let f = random_game(6, 2, 11);
        let a = m(&mut game(6, 2, &f), 30, &mut rng(42)).unwrap();
        let b = m(&mut game(6, 2, &f), 30, &mut rng(42)).unwrap();
        let c = m(&mut game(6, 2, &f), 30, &mut rng(43)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.attr, c.attr);
    }
}

#[test]
fn trials_average_and_give_standard_errors() {
    let f = random_game(4, 1, 3);
    let mut g = game(4, 1, &f);
    let one = attribute_trials(Method::ShapleyValues, &mut g, 1, 1, &mut rng(0)).unwrap();
    let three = attribute_trials(Method::ShapleyValues, &mut g, 1, 3, &mut rng(0)).unwrap();
    assert_close(&one.attr, &three.attr, 1e-12);
    assert!(
        three.stderr.unwrap().iter().flatten().all(|s| *s < 1e-12),
        "exact: no spread"
    );
    let svs = attribute_trials(Method::ShapleyValueSampling, &mut g, 3, 4, &mut rng(0)).unwrap();
    assert!(svs.stderr.unwrap().iter().flatten().any(|s| *s > 0.0));
    assert_eq!((Method::ShapleyValueSampling.facts().evaluations)(4, 3), 13);
}

#[test]
fn method_facts_count_the_evaluations_each_method_asks_for() {
    let methods = [
        Method::FeatureAblation,
        Method::ShapleyValues,
        Method::ShapleyValueSampling,
        Method::Lime,
        Method::KernelShap,
    ];
    for method in methods {
        let facts = method.facts();
        let n_samples = if facts.samples { 7 } else { facts.default_n_samples };
        let mut g = game(4, 1, additive);
        attribute(method, &mut g, n_samples, &mut rng(0)).unwrap();
        assert_eq!(g.calls, (facts.evaluations)(4, n_samples), "{method:?}");
    }
}

#[test]
fn the_exact_shapley_cap_is_one_rule_with_one_message() {
    let m = Method::ShapleyValues;
    // 2^14 coalitions fit in 20 000 sequences, 2^15 do not.
    assert!(m.check_features(14, 1, 20_000).is_ok());
    let e = m.check_features(15, 1, 20_000).unwrap_err();
    assert_eq!(e.field(), Some("method"));
    assert!(
        e.to_string().contains("at most 14 features here (15 given)"),
        "{e}"
    );
    assert!(m.check_features(20, 1, usize::MAX).is_ok());
    let mut g = game(21, 0, |_: &[bool]| vec![]);
    let direct = shapley_values(&mut g).unwrap_err();
    assert!(
        direct.to_string().contains("at most 20 features here (21 given)"),
        "{direct}"
    );
    assert_eq!(g.calls, 0);
    assert!(Method::FeatureAblation.check_features(64, 1, 1).is_ok());
}

/// A random game that records the coalitions it is asked for.
struct Recording {
    n: usize,
    asked: Vec<Coalition>,
}

impl Evaluator for Recording {
    fn n_features(&self) -> usize {
        self.n
    }
    fn n_outputs(&self) -> usize {
        2
    }
    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<Vec<f64>>> {
        self.asked.extend_from_slice(coalitions);
        let f = random_game(self.n, 1, 5);
        Ok(coalitions.iter().map(|c| vec![f(c)[0], f(c)[0]]).collect())
    }
}

#[test]
fn sampling_design_is_what_the_methods_evaluate() {
    let methods = [
        Method::ShapleyValueSampling,
        Method::Lime,
        Method::KernelShap,
        Method::ContextCite,
    ];
    for (method, seed) in methods.into_iter().zip([0, 7, 1, 3]) {
        let mut ev = Recording {
            n: 5,
            asked: Vec::new(),
        };
        attribute_trials(method, &mut ev, 9, 1, &mut method_rng(seed)).unwrap();
        let expected = match sampling_design(method, 5, 9, seed).unwrap() {
            SamplingDesign::Coalitions(c) => c,
            SamplingDesign::Permutations(perms) => {
                let mut c = vec![vec![false; 5]];
                for p in perms {
                    let mut now = vec![false; 5];
                    for f in p {
                        now[f] = true;
                        c.push(now.clone());
                    }
                }
                c
            }
        };
        assert_eq!(ev.asked, expected, "{method:?}");
        assert_ne!(
            sampling_design(method, 5, 9, seed + 1).unwrap(),
            sampling_design(method, 5, 9, seed).unwrap()
        );
    }
    let e = sampling_design(Method::ShapleyValues, 5, 9, 0).unwrap_err();
    assert_eq!(e.field(), Some("method"), "{e}");
}
