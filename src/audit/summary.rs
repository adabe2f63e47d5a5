//! Means, standard errors and 95% confidence intervals of an audit's log-probs, and the
//! per-value summary with ranks.

/// Mean, standard error of the mean (None for one sample) and a two-sided 95% Student-t
/// interval of `samples` (None for one sample).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Estimate {
    pub mean: f64,
    pub stderr: Option<f64>,
    pub ci: Option<[f64; 2]>,
}

pub(crate) fn estimate(samples: &[f64]) -> Estimate {
    let n = samples.len();
    let mean = samples.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return Estimate {
            mean,
            stderr: None,
            ci: None,
        };
    }
    let var = samples.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
    let se = (var / n as f64).sqrt();
    let half = t975(n - 1) * se;
    Estimate {
        mean,
        stderr: Some(se),
        ci: Some([mean - half, mean + half]),
    }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (df >= 1): a table up to 30,
/// then the Cornish-Fisher expansion around the normal quantile (error < 1e-3 there).
pub(crate) fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042,
    ];
    if (1..=30).contains(&df) {
        return TABLE[df - 1];
    }
    let z: f64 = 1.959_964;
    let d = df.max(1) as f64;
    z + (z.powi(3) + z) / (4.0 * d) + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * d * d)
}

/// Ranks by `score`, highest first (1-based; ties keep their order), and the gap of each to
/// the rank-1 score (zero or negative).
pub(crate) fn rank_and_gap(score: &[f64]) -> Vec<(usize, f64)> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
    let best = order.first().map(|&i| score[i]).unwrap_or(0.0);
    let mut out = vec![(0, 0.0); score.len()];
    for (r, &i) in order.iter().enumerate() {
        out[i] = (r + 1, score[i] - best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_of_known_samples() {
        let e = estimate(&[1.0, 2.0, 3.0]);
        assert_eq!(e.mean, 2.0);
        let se = (1.0f64 / 3.0).sqrt();
        assert!((e.stderr.unwrap() - se).abs() < 1e-12);
        let ci = e.ci.unwrap();
        assert!((ci[0] - (2.0 - 4.303 * se)).abs() < 1e-12 && (ci[1] - (2.0 + 4.303 * se)).abs() < 1e-12);
        let one = estimate(&[-3.5]);
        assert_eq!((one.mean, one.stderr, one.ci), (-3.5, None, None));
    }

    #[test]
    fn t_quantile_joins_the_table_smoothly() {
        assert_eq!(t975(1), 12.706);
        assert!((t975(31) - 2.040).abs() < 1e-3, "{}", t975(31));
        assert!((t975(60) - 2.000).abs() < 1e-3, "{}", t975(60));
        assert!((t975(100_000) - 1.960).abs() < 1e-3);
    }

    #[test]
    fn ranks_highest_first_with_gaps() {
        assert_eq!(
            rank_and_gap(&[-2.0, -1.0, -3.0, -1.0]),
            vec![(3, -1.0), (1, 0.0), (4, -2.0), (2, 0.0)]
        );
    }
}
