//! Alignment, checked and never assumed: the tokens a server scored must be the ones llm-attr
//! built, position by position; a difference is an error naming the first differing position
//! with both tokenizations around it, never a silently wrong number.

use super::protocol::{sequence, Echoed, Tok};
use crate::error::{Error, Result};
use crate::model::{ScoreItem, Tokenizer};

/// Tokens shown on each side of a differing position.
const AROUND: usize = 6;
/// A log-prob above 0 by more than this is arithmetic gone wrong, not rounding.
const ABOVE_ZERO: f64 = 1e-4;

/// The target's log-probs from what the server scored for `item`, after checking every
/// position it returned against llm-attr's sequence.
pub(crate) fn target_logprobs(item: &ScoreItem, echoed: &Echoed, tok: &Tokenizer) -> Result<Vec<f32>> {
    let seq = sequence(item);
    let first_target = item.prompt.len();
    if echoed.start > first_target || echoed.tokens.len() != echoed.logprobs.len() {
        return Err(Error::remote(
            "the server's log-probs do not cover the target (wrong logprob start)",
            false,
        ));
    }
    let covered = echoed.start + echoed.tokens.len();
    if let Some(pos) =
        (echoed.start..seq.len().min(covered)).find(|&p| !same(&echoed.tokens[p - echoed.start], seq[p], tok))
    {
        return Err(mismatch(&seq, echoed, pos, tok));
    }
    if covered < seq.len() {
        return Err(mismatch(&seq, echoed, covered, tok));
    }
    (first_target..seq.len())
        .map(|p| {
            let lp = echoed.logprobs[p - echoed.start];
            match lp {
                Some(x) if x.is_finite() && x <= ABOVE_ZERO => Ok(x.min(0.0) as f32),
                _ => Err(Error::remote(
                    format!(
                        "the server gave target token {:?} (position {p}) the log-prob {}: \
                         log-probs are finite and at most 0",
                        tok.decode(&[seq[p]]).unwrap_or_default(),
                        lp.map_or("null".to_string(), |x| x.to_string())
                    ),
                    false,
                )),
            }
        })
        .collect()
}

/// Whether the server's token is llm-attr's `id`. A string matches the id's text or its
/// vocabulary entry; a piece of a multi-byte character (shown as U+FFFD, or as nothing by
/// llama.cpp) matches any such piece, as two tokenizations' strings cannot tell them apart.
fn same(theirs: &Tok, id: u32, tok: &Tokenizer) -> bool {
    match theirs {
        Tok::Id(t) => *t == id,
        Tok::Text(s) => {
            let ours = tok.decode(&[id]).unwrap_or_default();
            let partial = |x: &str| x.is_empty() || x.contains('\u{fffd}');
            *s == ours
                || tok.inner().id_to_token(id).as_deref() == Some(s.as_str())
                || (partial(s) && (partial(&ours) || special(id, tok)))
        }
    }
}

/// Whether `id` is a special token (llama.cpp echoes those as nothing).
fn special(id: u32, tok: &Tokenizer) -> bool {
    tok.inner()
        .get_added_tokens_decoder()
        .get(&id)
        .is_some_and(|t| t.special)
}

fn show_ours(seq: &[u32], range: std::ops::Range<usize>, tok: &Tokenizer) -> String {
    let shown: Vec<String> = seq[range]
        .iter()
        .map(|&id| format!("{id}:{:?}", tok.decode(&[id]).unwrap_or_default()))
        .collect();
    shown.join(" ")
}

fn show_theirs(e: &Echoed, range: std::ops::Range<usize>, tok: &Tokenizer) -> String {
    let shown: Vec<String> = e.tokens[range]
        .iter()
        .map(|t| match t {
            Tok::Id(id) => format!("{id}:{:?}", tok.decode(&[*id]).unwrap_or_default()),
            Tok::Text(s) => format!("{s:?}"),
        })
        .collect();
    shown.join(" ")
}

/// The error for the first differing position `pos` (or where the server's tokens end).
fn mismatch(seq: &[u32], e: &Echoed, pos: usize, tok: &Tokenizer) -> Error {
    let from = pos.saturating_sub(AROUND).max(e.start);
    let ours = show_ours(seq, from..seq.len().min(pos + AROUND + 1), tok);
    let theirs_end = e.tokens.len().min(pos + AROUND + 1 - e.start);
    let theirs = show_theirs(e, (from - e.start)..theirs_end.max(from - e.start), tok);
    Error::remote(
        format!(
            "the server's tokens differ from llm-attr's at position {pos} (of {} llm-attr, {} the \
             server): from position {from}, llm-attr built [{ours}], the server scored [{theirs}]; \
             --tokenizer must be the served model's tokenizer (and text protocols need text that \
             re-tokenizes to the same tokens)",
            seq.len(),
            e.start + e.tokens.len()
        ),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
        crate::model::load::load_tokenizer(dir.to_str().unwrap()).unwrap()
    }

    fn echoed(start: usize, ids: &[u32], lps: &[Option<f64>]) -> Echoed {
        Echoed {
            start,
            tokens: ids.iter().map(|&i| Tok::Id(i)).collect(),
            logprobs: lps.to_vec(),
        }
    }

    #[test]
    fn aligned_tokens_give_the_target_log_probs() {
        let tok = tokenizer();
        let item = ScoreItem {
            prompt: vec![10, 11, 12],
            target: vec![13, 14],
        };
        let e = echoed(
            0,
            &[10, 11, 12, 13, 14, 99],
            &[None, Some(-1.0), Some(-2.0), Some(-3.5), Some(-0.25), Some(-9.0)],
        );
        assert_eq!(target_logprobs(&item, &e, &tok).unwrap(), vec![-3.5, -0.25]);
        let late = echoed(2, &[12, 13, 14], &[None, Some(-3.5), Some(-0.25)]);
        assert_eq!(target_logprobs(&item, &late, &tok).unwrap(), vec![-3.5, -0.25]);
    }

    #[test]
    fn a_different_token_names_its_position_and_both_tokenizations() {
        let tok = tokenizer();
        let item = ScoreItem {
            prompt: vec![10, 11, 12],
            target: vec![13, 14],
        };
        let e = echoed(
            0,
            &[10, 11, 7, 13, 14],
            &[None, Some(-1.0), Some(-2.0), Some(-3.5), Some(-0.25)],
        );
        let err = target_logprobs(&item, &e, &tok).unwrap_err().to_string();
        assert!(err.contains("position 2"), "{err}");
        assert!(err.contains("12:") && err.contains("7:"), "{err}");
        let short = echoed(0, &[10, 11, 12, 13], &[None, Some(-1.0), Some(-2.0), Some(-3.5)]);
        let err = target_logprobs(&item, &short, &tok).unwrap_err().to_string();
        assert!(err.contains("position 4"), "{err}");
    }

    #[test]
    fn impossible_log_probs_are_refused() {
        let tok = tokenizer();
        let item = ScoreItem {
            prompt: vec![10],
            target: vec![13],
        };
        for bad in [None, Some(0.5), Some(f64::NEG_INFINITY)] {
            let e = echoed(0, &[10, 13], &[None, bad]);
            assert!(target_logprobs(&item, &e, &tok).is_err(), "{bad:?}");
        }
    }
}
