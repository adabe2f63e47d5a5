//! The start-up checks of a remote model: one short probe scored through the server (every
//! log-prob finite and at most 0, tokens aligned), and with `--verify-with` a comparison of a
//! few sequences against a local model, which refuses a server that disagrees beyond the
//! tolerance and names the position (an off-by-one server reads each token's log-prob from
//! the distribution after it).

use super::RemoteModel;
use crate::error::{Error, Result};
use crate::model::{LoadOptions, Model, ScoreItem};
use crate::scorer::Scorer;

/// The self-check's probe: a prompt and its continuation.
const PROBE: (&str, &str) = ("The capital of France is", " Paris");
/// Texts compared with `--verify-with`, every token after the first.
const VERIFY: [&str; 3] = [
    "Georg from Germany applied for the job as a software engineer.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
];

/// Scores the probe; the alignment check refuses impossible log-probs.
pub fn self_check(model: &RemoteModel) -> Result<()> {
    let tok = model.tokenizer();
    let item = ScoreItem {
        prompt: tok.encode_prompt(PROBE.0)?,
        target: tok.encode(PROBE.1)?,
    };
    let scores = model
        .score_batch(std::slice::from_ref(&item))
        .map_err(|e| start_error(model, e))?;
    tracing::info!(probe = ?scores.first(), "the inference server passed the self-check");
    Ok(())
}

fn start_error(model: &RemoteModel, e: Error) -> Error {
    let protocol = model.protocol().name();
    e.with_remote_message(|m| format!("start-up self-check ({protocol} protocol): {m}"))
}

/// The verification sequences: each text's first token as the prompt, the rest as target.
fn verify_items(model: &RemoteModel) -> Result<Vec<ScoreItem>> {
    let tok = model.tokenizer();
    VERIFY
        .iter()
        .map(|text| {
            let ids = tok.encode_prompt(text)?;
            let split = tok.encode_prompt("")?.len() + 1;
            Ok(ScoreItem {
                prompt: ids[..split.min(ids.len())].to_vec(),
                target: ids[split.min(ids.len())..].to_vec(),
            })
        })
        .collect()
}

/// Compares the server with the local model `spec` on [`VERIFY`]; the largest difference
/// must stay within `tolerance` nats.
pub fn verify_with(model: &RemoteModel, spec: &str, tolerance: f64) -> Result<()> {
    let local = Model::load(spec, &LoadOptions::default())
        .map_err(|e| Error::invalid("verify-with", format!("cannot load {spec}: {e}")))?;
    let items = verify_items(model)?;
    let theirs = model.score_batch(&items)?;
    let ours = Scorer::score(local.as_ref(), items.clone(), &|_, _| {})?;
    let worst = worst_difference(&items, &theirs, &ours);
    let Some((diff, seq, k)) = worst else {
        return Ok(());
    };
    let (item, pos) = (&items[seq], items[seq].prompt.len() + k);
    if diff > tolerance {
        let token = model.tokenizer().decode(&item.target[k..=k]).unwrap_or_default();
        return Err(Error::invalid(
            "verify-with",
            format!(
                "the inference server disagrees with {spec} at position {pos} of {VERIFY:?}[{seq}] \
                 (token {token:?}): the server gives {:.4}, the local model {:.4} (difference \
                 {diff:.4} > tolerance {tolerance}); a server that reads each token's log-prob \
                 from the position after it (llama-cpp-python's echo) is off by one",
                theirs[seq][k], ours[seq][k]
            ),
        ));
    }
    tracing::info!(
        spec,
        max_difference = diff,
        position = pos,
        "the inference server agrees with the local model"
    );
    Ok(())
}

/// The largest |server - local| over every target token: (difference, sequence, token).
fn worst_difference(items: &[ScoreItem], a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<(f64, usize, usize)> {
    let mut worst: Option<(f64, usize, usize)> = None;
    for (s, (x, y)) in a.iter().zip(b).enumerate().take(items.len()) {
        for (k, (p, q)) in x.iter().zip(y).enumerate() {
            let d = (f64::from(*p) - f64::from(*q)).abs();
            if worst.is_none_or(|w| d > w.0) {
                worst = Some((d, s, k));
            }
        }
    }
    worst
}
