//! Segmented placeholders: a value cut into sentences, paragraphs, lines or words, each segment
//! one feature.
//!
//! A segment is a run of text with no whitespace at either end; what lies between two segments
//! is a gap of whitespace. An absent segment is removed together with one gap, so the rest
//! reads as if it had never been written: between two segments that stay, the strongest gap
//! they span is kept (the one with the most line breaks; on a tie, the later one), and nothing
//! is kept before the first or after the last but the value's own leading and trailing
//! whitespace. A segment replaced by a non-empty baseline keeps its gaps.

use std::ops::Range;

use unicode_segmentation::UnicodeSegmentation;

use crate::request::SplitKind;

/// The byte ranges of `value`'s segments of `kind`, in order, none empty and none with
/// whitespace at either end.
pub(crate) fn segments(value: &str, kind: SplitKind) -> Vec<Range<usize>> {
    let pieces: Vec<Range<usize>> = match kind {
        SplitKind::Sentence => sentences(value),
        SplitKind::Paragraph => paragraphs(value),
        SplitKind::Line => lines(value),
        SplitKind::Word => words(value),
    };
    pieces.into_iter().filter_map(|r| trim(value, r)).collect()
}

/// `r` without the whitespace at its ends; `None` when nothing is left.
fn trim(value: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = value.get(r.clone())?;
    let lead = s.len() - s.trim_start().len();
    let trimmed = s.trim();
    (!trimmed.is_empty()).then(|| r.start + lead..r.start + lead + trimmed.len())
}

fn words(value: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (at, c) in value.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push(s..at);
                start = None;
            }
            (false, None) => start = Some(at),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(s..value.len());
    }
    out
}

fn lines(value: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (at, _) in value.match_indices('\n') {
        out.push(start..at);
        start = at + 1;
    }
    out.push(start..value.len());
    out
}

/// Paragraphs are separated by blank lines (lines holding only whitespace).
fn paragraphs(value: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut blank_run = false;
    for line in lines(value) {
        let blank = value.get(line.clone()).is_none_or(|l| l.trim().is_empty());
        if blank && !blank_run {
            out.push(start..line.start);
        }
        if !blank && blank_run {
            start = line.start;
        }
        blank_run = blank;
    }
    if !blank_run {
        out.push(start..value.len());
    }
    out
}

/// Titles and Latin abbreviations: always followed by more of the same sentence.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "gen", "col", "lt", "sgt", "capt", "gov", "rev",
    "hon", "pres", "sen", "messrs", "mme", "mlle", "e.g", "i.e", "cf", "vs", "viz", "approx",
];

/// Abbreviations that go before a number ("No. 5", "Fig. 2", "Jan. 12").
const NUMBERED: &[&str] = &[
    "no", "nos", "vol", "vols", "fig", "figs", "p", "pp", "ch", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "sept", "oct", "nov", "dec",
];

/// Words that begin sentences: after "U.S." they mean the sentence ended there.
const STARTERS: &[&str] = &[
    "a", "an", "the", "he", "she", "it", "they", "we", "i", "you", "this", "that", "these", "those", "there",
    "but", "and", "or", "so", "yet", "in", "on", "at", "as", "if", "when", "while", "after", "before",
    "then", "however", "its", "his", "her", "their", "our", "my", "what", "who", "why", "how", "where",
    "one", "no", "not", "all", "some", "many", "most",
];

/// UAX #29 sentences (which also end at every line break), joined again where a break follows
/// an English abbreviation ("Dr.", "e.g.", an initial, "U.S." before a name) or comes before a
/// lowercase letter (`"Yes!" she said.`).
fn sentences(value: &str) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (at, s) in value.split_sentence_bound_indices() {
        let r = at..at + s.len();
        match out.last_mut() {
            Some(last) if joins(value, last.clone(), s) => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

/// True when the sentence `prev` ends in an abbreviation that `next` continues.
fn joins(value: &str, prev: Range<usize>, next: &str) -> bool {
    let Some(text) = value.get(prev) else {
        return false;
    };
    // A break at a line end is a real one.
    if text.ends_with('\n') || text.ends_with('\r') {
        return false;
    }
    // English sentences start with a capital: `"Yes!" she said.` is one.
    if next.trim_start().starts_with(|c: char| c.is_lowercase()) {
        return true;
    }
    let Some(word) = text.split_whitespace().last() else {
        return false;
    };
    let Some(stem) = word.strip_suffix('.') else {
        return false;
    };
    let stem = stem.trim_start_matches(|c: char| !c.is_alphanumeric());
    let lower = stem.to_lowercase();
    if ABBREVIATIONS.contains(&lower.as_str()) {
        return true;
    }
    let next_word: String = next
        .split_whitespace()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect::<String>()
        .to_lowercase();
    if NUMBERED.contains(&lower.as_str()) {
        return next.trim_start().starts_with(|c: char| c.is_ascii_digit());
    }
    let mut chars = stem.chars();
    let initial = matches!((chars.next(), chars.next()), (Some(c), None) if c.is_uppercase());
    // "U.S.", "U.K.": letters and dots.
    let acronym = stem.contains('.') && stem.chars().all(|c| c == '.' || c.is_alphabetic());
    (initial || acronym) && !next_word.is_empty() && !STARTERS.contains(&next_word.as_str())
}

/// One placeholder's value as segments and the gaps between them. Frozen segments (those of
/// coarser segments that a hierarchy does not refine) are always present.
#[derive(Debug, Clone)]
pub(crate) struct Segmented {
    pre: String,
    segments: Vec<Segment>,
    post: String,
}

#[derive(Debug, Clone)]
struct Segment {
    text: String,
    /// The whitespace between the previous segment and this one (empty for the first).
    gap: String,
    /// Its slot, or `None` when it is frozen.
    slot: Option<usize>,
}

/// `text` as it is rendered: a segment's own text, its baseline, or "" when it is removed.
pub(crate) type SlotText<'v> = &'v dyn Fn(usize) -> &'v str;

impl Segmented {
    /// `value` cut at `ranges` (in order, non-overlapping, trimmed); a range marked active gets
    /// the next slot from `next_slot`, the others are frozen.
    pub(crate) fn new(
        value: &str,
        ranges: &[(Range<usize>, bool)],
        mut next_slot: impl FnMut() -> usize,
    ) -> Self {
        let mut segments = Vec::with_capacity(ranges.len());
        let mut end = 0;
        for (r, active) in ranges {
            segments.push(Segment {
                text: value.get(r.clone()).unwrap_or("").to_string(),
                gap: value.get(end..r.start).unwrap_or("").to_string(),
                slot: active.then(&mut next_slot),
            });
            end = r.end;
        }
        let pre = segments
            .first_mut()
            .map(|s| std::mem::take(&mut s.gap))
            .unwrap_or_default();
        Segmented {
            pre,
            segments,
            post: value.get(end..).unwrap_or("").to_string(),
        }
    }

    /// Appends the value to `out` with each active segment's text given by `text(slot)` (empty:
    /// removed with a gap); pushes the byte range of every active segment written, with its slot.
    pub(crate) fn render(&self, out: &mut String, spans: &mut Vec<(Range<usize>, usize)>, text: SlotText) {
        out.push_str(&self.pre);
        let mut last: Option<usize> = None;
        for (i, seg) in self.segments.iter().enumerate() {
            let t: &str = match seg.slot {
                None => &seg.text,
                Some(s) => text(s),
            };
            if t.is_empty() {
                continue;
            }
            if let Some(k) = last {
                out.push_str(self.strongest_gap(k + 1..i + 1));
            }
            let start = out.len();
            out.push_str(t);
            if let Some(s) = seg.slot {
                spans.push((start..out.len(), s));
            }
            last = Some(i);
        }
        out.push_str(&self.post);
    }

    /// The gap with the most line breaks among those of `segments[range]`; the later on a tie.
    fn strongest_gap(&self, range: Range<usize>) -> &str {
        self.segments
            .get(range)
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .max_by_key(|(i, s)| (s.gap.matches('\n').count(), *i))
            .map_or("", |(_, s)| s.gap.as_str())
    }

    /// The active segments' texts, in slot order.
    pub(crate) fn active(&self) -> impl Iterator<Item = (usize, &str)> {
        self.segments
            .iter()
            .filter_map(|s| s.slot.map(|slot| (slot, s.text.as_str())))
    }
}

/// A segment's name: the placeholder, its index and its first words.
pub(crate) fn segment_name(placeholder: &str, index: usize, text: &str) -> String {
    const WORDS: usize = 6;
    let words: Vec<&str> = text.split_whitespace().collect();
    let head = words.iter().take(WORDS).copied().collect::<Vec<_>>().join(" ");
    let more = if words.len() > WORDS { "…" } else { "" };
    format!("{placeholder}[{index}] {head}{more}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(value: &str, kind: SplitKind) -> Vec<&str> {
        segments(value, kind).into_iter().map(|r| &value[r]).collect()
    }

    #[test]
    fn sentences_keep_abbreviations_together() {
        let v = "Dr. Smith went to Washington. He met the U.S. President there, e.g. Mr. Biden. \
                 It rained in the U.S. The end came at 5 p.m. today. J. R. R. Tolkien wrote it. See No. 5, then say no. Fine.";
        assert_eq!(
            texts(v, SplitKind::Sentence),
            vec![
                "Dr. Smith went to Washington.",
                "He met the U.S. President there, e.g. Mr. Biden.",
                "It rained in the U.S.",
                "The end came at 5 p.m. today.",
                "J. R. R. Tolkien wrote it.",
                "See No. 5, then say no.",
                "Fine.",
            ]
        );
        // UAX #29: a line break ends a sentence; "?" and "!" too; quotes stay with theirs.
        assert_eq!(
            texts("Is it? \"Yes!\" she said.\nNext line", SplitKind::Sentence),
            vec!["Is it?", "\"Yes!\" she said.", "Next line"]
        );
    }

    #[test]
    fn paragraphs_lines_and_words() {
        let v = "  One. Two.\nThree.\n \n\nFour\tfive.  \n";
        assert_eq!(
            texts(v, SplitKind::Paragraph),
            vec!["One. Two.\nThree.", "Four\tfive."]
        );
        assert_eq!(
            texts(v, SplitKind::Line),
            vec!["One. Two.", "Three.", "Four\tfive."]
        );
        assert_eq!(
            texts(v, SplitKind::Word),
            vec!["One.", "Two.", "Three.", "Four", "five."]
        );
        assert!(segments(" \n\t", SplitKind::Sentence).is_empty());
    }

    fn render(value: &str, kind: SplitKind, keep: &[bool], baseline: &str) -> String {
        let ranges: Vec<_> = segments(value, kind).into_iter().map(|r| (r, true)).collect();
        let mut n = 0;
        let s = Segmented::new(value, &ranges, || {
            n += 1;
            n - 1
        });
        let texts: Vec<String> = s.active().map(|(_, t)| t.to_string()).collect();
        let pick = |slot: usize| {
            if keep[slot] {
                texts[slot].as_str()
            } else {
                baseline
            }
        };
        let mut out = String::new();
        s.render(&mut out, &mut Vec::new(), &pick);
        out
    }

    #[test]
    fn an_absent_segment_goes_with_one_gap() {
        let v = "A one. B two.\n\nC three. D four.";
        let k = |bits: &str| bits.chars().map(|c| c == '1').collect::<Vec<_>>();
        assert_eq!(render(v, SplitKind::Sentence, &k("1111"), ""), v);
        assert_eq!(
            render(v, SplitKind::Sentence, &k("0111"), ""),
            "B two.\n\nC three. D four."
        );
        assert_eq!(
            render(v, SplitKind::Sentence, &k("1011"), ""),
            "A one.\n\nC three. D four."
        );
        assert_eq!(
            render(v, SplitKind::Sentence, &k("1110"), ""),
            "A one. B two.\n\nC three."
        );
        assert_eq!(
            render(v, SplitKind::Sentence, &k("1001"), ""),
            "A one.\n\nD four."
        );
        assert_eq!(render(v, SplitKind::Sentence, &k("0000"), ""), "");
        // A baseline replaces the segment and keeps every gap.
        assert_eq!(
            render(v, SplitKind::Sentence, &k("1011"), "X."),
            "A one. X.\n\nC three. D four."
        );
        assert_eq!(render(" x y ", SplitKind::Word, &[true, false], ""), " x ");
    }

    #[test]
    fn names_show_the_first_words() {
        assert_eq!(
            segment_name("context", 3, "One two three."),
            "context[3] One two three."
        );
        assert_eq!(segment_name("c", 0, "a b c d e f g h"), "c[0] a b c d e f…");
    }
}
