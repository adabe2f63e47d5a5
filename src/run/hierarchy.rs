//! `hierarchy`: attribution level by level, coarse to fine, as AttriBoT does it. The first level
//! cuts the split placeholders into segments of the first kind; each next level cuts only the
//! `top_k` segments with the highest attributions into segments of its kind, the others staying
//! in the prompt whole and unperturbed. Every level uses the same method and target.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{run_level, LevelSetup, Limits, Progress};
use crate::error::{Error, Result};
use crate::input::split::segments;
use crate::input::{kind_name, Layout, Layouts};
use crate::request::{AttributeRequest, AttributeResponse, Feature, Level, SplitKind, Stats};
use crate::scorer::Scorer;

/// Checks `hierarchy` and `top_k` against each other and the rest of the request.
pub(super) fn check_fields(request: &AttributeRequest) -> Result<()> {
    let (levels, k) = match (&request.hierarchy, request.top_k) {
        (None, None) => return Ok(()),
        (None, Some(_)) => {
            return Err(Error::invalid(
                "top_k",
                "only with `hierarchy`: it says how many segments of a level are cut into the next",
            ))
        }
        (Some(_), None) => {
            return Err(Error::invalid(
                "top_k",
                "`hierarchy` needs `top_k`: how many segments of each level to cut into the next \
                 level's (e.g. 3)",
            ))
        }
        (Some(levels), Some(k)) => (levels, k),
    };
    if k == 0 {
        return Err(Error::invalid("top_k", "must be at least 1"));
    }
    let coarse_to_fine = levels.windows(2).all(|w| w[0] < w[1]);
    if levels.len() < 2 || !coarse_to_fine {
        return Err(Error::invalid(
            "hierarchy",
            "give two or more kinds, coarse to fine, each once: paragraph, line, sentence, word \
             (e.g. [\"paragraph\", \"sentence\"])",
        ));
    }
    if request.method.facts().gradient.is_some() {
        return Err(Error::invalid(
            "hierarchy",
            format!(
                "{} attributes through gradients, not by cutting the prompt; use a perturbation method",
                request.method.name()
            ),
        ));
    }
    check_split(request, levels)
}

/// Every split placeholder is cut into the last level's kind, and no mask names a segment (a
/// segment's index changes from level to level).
fn check_split(request: &AttributeRequest, levels: &[SplitKind]) -> Result<()> {
    let last = levels.last().copied().unwrap_or(SplitKind::Sentence);
    let split = request.split.as_ref().filter(|s| !s.is_empty()).ok_or_else(|| {
        Error::invalid(
            "hierarchy",
            format!(
                "needs `split`: the placeholders to attribute level by level (e.g. {{\"context\": \"{}\"}})",
                kind_name(last)
            ),
        )
    })?;
    if let Some((name, kind)) = split.iter().find(|(_, k)| **k != last) {
        return Err(Error::invalid(
            "hierarchy",
            format!(
                "ends with {} but `split` cuts `{name}` into {}: the last level is the split's kind",
                kind_name(last),
                kind_name(*kind)
            ),
        ));
    }
    if let Some(key) = request
        .mask
        .iter()
        .flat_map(|m| m.keys())
        .find(|k| k.contains('['))
    {
        return Err(Error::invalid(
            format!("mask.{key}"),
            "segments cannot be grouped with `hierarchy`: their indices change from level to level",
        ));
    }
    Ok(())
}

/// Runs every level; the response is the last level's, with all levels in `levels` and the
/// stats of all of them added up.
pub(super) fn run(
    request: &AttributeRequest,
    scorer: &dyn Scorer,
    limits: &Limits,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<AttributeResponse> {
    let started = Instant::now();
    let kinds = request.hierarchy.clone().unwrap_or_default();
    let k = request.top_k.unwrap_or(1);
    let empty = BTreeMap::new();
    let values = request.values.as_ref().unwrap_or(&empty);
    let mut layouts = first_layouts(request, values, kinds.first().copied());
    let mut setup = LevelSetup::default();
    let mut levels = Vec::with_capacity(kinds.len());
    let mut total = Stats::default();
    for (l, &kind) in kinds.iter().enumerate() {
        setup.layouts = Some(layouts.clone());
        let mut r = run_level(request, scorer, limits, progress, &setup)?;
        add(&mut total, &r.stats);
        let next = kinds.get(l + 1).copied();
        let refined = next
            .map(|_| top_k(&r.features, &r.seq_attr, k))
            .unwrap_or_default();
        levels.push(Level {
            kind,
            features: r.features.clone(),
            seq_attr: r.seq_attr.clone(),
            token_attr: r.token_attr.clone(),
            refined: refined.clone(),
            stats: r.stats.clone(),
        });
        let Some(next) = next else {
            total.seconds = started.elapsed().as_secs_f64();
            r.stats = total;
            r.levels = Some(levels);
            return Ok(r);
        };
        setup.target = Some((r.target_ids.clone(), r.generated_target));
        layouts = refine(&layouts, values, &r.features, &refined, next);
    }
    Err(Error::Internal("a hierarchy without levels".into()))
}

/// The first level: every segment of the first kind a feature.
fn first_layouts(
    request: &AttributeRequest,
    values: &BTreeMap<String, String>,
    kind: Option<SplitKind>,
) -> Layouts {
    let kind = kind.unwrap_or(SplitKind::Paragraph);
    request
        .split
        .iter()
        .flat_map(|s| s.keys())
        .map(|name| {
            let value = values.get(name).map_or("", String::as_str);
            let ranges = segments(value, kind).into_iter().map(|r| (r, true)).collect();
            (name.clone(), Layout { kind, ranges })
        })
        .collect()
}

fn add(total: &mut Stats, s: &Stats) {
    total.evaluations += s.evaluations;
    total.coalitions += s.coalitions;
    total.unique_sequences += s.unique_sequences;
    total.tokens_scored += s.tokens_scored;
}

/// The `k` segment features with the highest attributions (the earlier on a tie), by index.
fn top_k(features: &[Feature], seq_attr: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..features.len())
        .filter(|&i| !features[i].segments.is_empty())
        .collect();
    order.sort_by(|&a, &b| seq_attr[b].total_cmp(&seq_attr[a]).then(a.cmp(&b)));
    order.truncate(k);
    order.sort_unstable();
    order
}

/// The next level's layouts: the refined features' segments cut into `kind`, the other
/// segments frozen whole.
fn refine(
    layouts: &Layouts,
    values: &BTreeMap<String, String>,
    features: &[Feature],
    refined: &[usize],
    kind: SplitKind,
) -> Layouts {
    let mut out = Layouts::new();
    for (name, layout) in layouts {
        let chosen: BTreeSet<usize> = refined
            .iter()
            .filter_map(|&f| features.get(f))
            .flat_map(|f| &f.segments)
            .filter(|s| &s.placeholder == name)
            .map(|s| s.index)
            .collect();
        let value = values.get(name).map_or("", String::as_str);
        let mut ranges = Vec::new();
        let mut index = 0;
        for (r, active) in &layout.ranges {
            if *active && chosen.contains(&index) {
                let inner = value.get(r.clone()).unwrap_or("");
                ranges.extend(
                    segments(inner, kind)
                        .into_iter()
                        .map(|s| (s.start + r.start..s.end + r.start, true)),
                );
            } else {
                ranges.push((r.clone(), false));
            }
            index += usize::from(*active);
        }
        out.insert(name.clone(), Layout { kind, ranges });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::SegmentRef;

    fn segment_feature(index: usize) -> Feature {
        Feature {
            name: format!("c[{index}]"),
            value: String::new(),
            baselines: Vec::new(),
            placeholders: Vec::new(),
            segments: vec![SegmentRef {
                placeholder: "c".into(),
                kind: SplitKind::Paragraph,
                index,
                start: 0,
                end: 0,
            }],
            token_id: None,
            position: None,
        }
    }

    #[test]
    fn the_top_paragraphs_are_cut_into_sentences_and_the_rest_frozen() {
        let value = "A1. A2.\n\nB1. B2. B3.\n\nC1.".to_string();
        let values = BTreeMap::from([("c".to_string(), value.clone())]);
        let ranges: Vec<_> = segments(&value, SplitKind::Paragraph)
            .into_iter()
            .map(|r| (r, true))
            .collect();
        let layouts = Layouts::from([(
            "c".to_string(),
            Layout {
                kind: SplitKind::Paragraph,
                ranges,
            },
        )]);
        let features: Vec<Feature> = (0..3).map(segment_feature).collect();
        let chosen = top_k(&features, &[0.5, 2.0, 1.0], 2);
        assert_eq!(chosen, vec![1, 2]);
        let next = refine(&layouts, &values, &features, &chosen, SplitKind::Sentence);
        let got: Vec<(&str, bool)> = next["c"]
            .ranges
            .iter()
            .map(|(r, a)| (&value[r.clone()], *a))
            .collect();
        assert_eq!(
            got,
            vec![
                ("A1. A2.", false),
                ("B1.", true),
                ("B2.", true),
                ("B3.", true),
                ("C1.", true)
            ]
        );
    }
}
