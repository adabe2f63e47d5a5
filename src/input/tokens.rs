//! Token input: every token of a text is a feature, except `skip_tokens`.

use crate::error::{Error, Result};
use crate::model::Tokenizer;
use crate::request::{Feature, TokenRef};

#[derive(Debug, Clone)]
pub struct TokenInput {
    pub ids: Vec<u32>,
    /// Byte range of the text each token came from.
    offsets: Vec<(usize, usize)>,
    text: String,
    /// Prompt positions that are features, in order.
    pub positions: Vec<usize>,
    /// Replaces an absent token; `None` removes it.
    pub baseline: Option<u32>,
}

fn resolve(r: &TokenRef, tokenizer: &Tokenizer, field: &str) -> Result<u32> {
    match r {
        TokenRef::Id(id) => {
            let vocab = tokenizer.vocab_size();
            if (*id as usize) < vocab {
                Ok(*id)
            } else {
                Err(Error::invalid(
                    field,
                    format!("token id {id} is out of range (vocabulary size {vocab})"),
                ))
            }
        }
        TokenRef::Text(s) => tokenizer.token_id(s).ok_or_else(|| {
            Error::invalid(
                field,
                format!("{s:?} is not one token of this model's vocabulary (give a token string or an id)"),
            )
        }),
    }
}

impl TokenInput {
    pub(crate) fn new(
        text: &str,
        skip: Option<&[TokenRef]>,
        baseline: Option<&TokenRef>,
        tokenizer: &Tokenizer,
    ) -> Result<TokenInput> {
        if text.is_empty() {
            return Err(Error::invalid("text", "the text is empty"));
        }
        let (ids, offsets) = tokenizer.encode_prompt_with_offsets(text)?;
        if ids.is_empty() {
            return Err(Error::invalid("text", "the text tokenizes to nothing"));
        }
        let mut skip_ids = Vec::new();
        for (i, r) in skip.unwrap_or_default().iter().enumerate() {
            skip_ids.push(resolve(r, tokenizer, &format!("skip_tokens[{i}]"))?);
        }
        let baseline = baseline
            .map(|r| resolve(r, tokenizer, "baseline_token"))
            .transpose()?;
        let positions: Vec<usize> = (0..ids.len()).filter(|&p| !skip_ids.contains(&ids[p])).collect();
        if positions.is_empty() {
            return Err(Error::invalid(
                "skip_tokens",
                "every token of the text is skipped: nothing is left to attribute",
            ));
        }
        Ok(TokenInput {
            ids,
            offsets,
            text: text.to_string(),
            positions,
            baseline,
        })
    }

    pub(crate) fn features(&self, tokenizer: &Tokenizer) -> Vec<Feature> {
        self.positions
            .iter()
            .map(|&p| {
                let decoded = tokenizer.decode(&self.ids[p..p + 1]).unwrap_or_default();
                let (a, b) = self.offsets.get(p).copied().unwrap_or((0, 0));
                let text = match self.text.get(a..b) {
                    Some(s) if decoded.contains('\u{FFFD}') && !s.is_empty() => s.to_string(),
                    _ => decoded,
                };
                Feature {
                    segments: Vec::new(),
                    name: text.clone(),
                    value: text,
                    baselines: vec![match self.baseline {
                        Some(id) => tokenizer.decode(&[id]).unwrap_or_default(),
                        None => String::new(),
                    }],
                    placeholders: Vec::new(),
                    token_id: Some(self.ids[p]),
                    position: Some(p),
                }
            })
            .collect()
    }

    /// Ids with every absent feature (choice `Some`) replaced or removed.
    pub(crate) fn render(&self, choice: &[Option<usize>]) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.ids.len());
        let mut f = 0;
        for (p, &id) in self.ids.iter().enumerate() {
            if self.positions.get(f) == Some(&p) {
                let absent = choice.get(f).is_some_and(Option::is_some);
                f += 1;
                if absent {
                    if let Some(b) = self.baseline {
                        out.push(b);
                    }
                    continue;
                }
            }
            out.push(id);
        }
        out
    }
}
