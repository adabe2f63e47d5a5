//! Warnings a response carries: what may make its numbers mislead, in plain words.

use crate::request::{Warning, WarningCode};

/// A row is flagged when its convergence delta exceeds this share of f(input) - f(baseline).
pub(super) const MAX_DELTA_SHARE: f64 = 0.1;

/// Below this a delta is rounding, whatever the change it is measured against.
const NEGLIGIBLE: f64 = 1e-6;

/// The convergence warning of a gradient result: `deltas[r]` (row r's sum minus what it should
/// come to) against `changes[r]` (f(input) - f(baseline) of row r). None without deltas.
pub(super) fn convergence(deltas: Option<&[f64]>, changes: &[f64]) -> Vec<Warning> {
    let Some(deltas) = deltas else {
        return Vec::new();
    };
    let rows: Vec<usize> = deltas
        .iter()
        .zip(changes)
        .enumerate()
        .filter(|(_, (d, c))| d.abs() > NEGLIGIBLE && d.abs() > MAX_DELTA_SHARE * c.abs())
        .map(|(r, _)| r)
        .collect();
    let Some(worst) = rows
        .iter()
        .copied()
        .max_by(|&a, &b| share(deltas[a], changes[a]).total_cmp(&share(deltas[b], changes[b])))
    else {
        return Vec::new();
    };
    let (delta, change) = (deltas[worst], changes[worst]);
    let percent = share(delta, change) * 100.0;
    let missed = if percent.is_finite() {
        format!("{percent:.0}% of f(input) − f(baseline) = {change:.4}")
    } else {
        "while f(input) − f(baseline) is 0".to_string()
    };
    let (flagged, total, row, limit) = (rows.len(), deltas.len(), worst + 1, MAX_DELTA_SHARE * 100.0);
    let message = format!(
        "The attribution does not add up: in {flagged} of {total} rows the attributions' sum misses \
         the change they explain by more than {limit:.0}% (worst: row {row}, off by {delta:.4}, \
         {missed}). Use more steps (n_steps) or samples, or another baseline token."
    );
    vec![Warning {
        code: WarningCode::ConvergenceDelta,
        message,
        rows,
    }]
}

/// |delta| as a share of |change| (infinite when the change is 0).
fn share(delta: f64, change: f64) -> f64 {
    if change == 0.0 {
        f64::INFINITY
    } else {
        delta.abs() / change.abs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_rows_whose_delta_exceeds_a_tenth_of_the_change() {
        let w = convergence(Some(&[105.9, -0.05, -86.9]), &[3.0, 1.0, -0.2]);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].code, WarningCode::ConvergenceDelta);
        assert_eq!(w[0].rows, vec![0, 2]);
        assert!(w[0].message.contains("2 of 3 rows"), "{}", w[0].message);
        assert!(
            w[0].message.contains("row 3"),
            "the worst share: {}",
            w[0].message
        );
    }

    #[test]
    fn no_warning_when_rows_add_up_or_without_deltas() {
        assert!(convergence(Some(&[0.01, -0.02]), &[1.0, -1.0]).is_empty());
        assert!(convergence(Some(&[1e-9]), &[0.0]).is_empty());
        assert!(convergence(None, &[1.0]).is_empty());
    }
}
