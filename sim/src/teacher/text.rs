//! Small text tools shared by the simulated teacher's stages: reading the pieces of a prompt
//! (labelled lines, bullet lists, fenced blocks), deterministic choices, and string distances.

use gymforge_actors::seed::{Rng, hash};

/// A deterministic source of choices, seeded from the simulator seed and stable names.
pub(crate) struct Draw(Rng);

impl Draw {
    /// A generator for one decision context: the seed plus every part that names it.
    pub(crate) fn new(seed: u64, parts: &[&str]) -> Draw {
        let seed_text = seed.to_string();
        let mut all: Vec<&str> = Vec::with_capacity(parts.len() + 1);
        all.push(&seed_text);
        all.extend_from_slice(parts);
        Draw(Rng::new(hash(&all)))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A uniform float in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniform index below `n` (0 when `n` is 0).
    pub(crate) fn index(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}

/// The value of the first line of `text` that starts with `label` (e.g. `"Domain:"`), trimmed.
pub(crate) fn labelled_line(text: &str, label: &str) -> Option<String> {
    text.lines().map(str::trim).find_map(|line| line.strip_prefix(label)).map(|rest| rest.trim().to_string())
}

/// Everything after the line that holds the first occurrence of `header`.
pub(crate) fn block_after<'a>(text: &'a str, header: &str) -> Option<&'a str> {
    let start = text.find(header)?;
    let rest = &text[start + header.len()..];
    let rest = match rest.find('\n') {
        Some(i) => &rest[i + 1..],
        None => "",
    };
    Some(rest)
}

/// Items of a bullet list at the start of `text`: lines starting with `-`, `*` or `1.`; stops at
/// the first line that is neither an item nor blank. Placeholder items such as `(none)` are
/// dropped.
pub(crate) fn bullet_items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            if items.is_empty() {
                continue;
            }
            break;
        }
        let item = if let Some(rest) = line.strip_prefix("- ").or_else(|| line.strip_prefix("* ")) {
            rest
        } else if let Some(dot) = line.find(". ").filter(|&i| i > 0 && line[..i].chars().all(|c| c.is_ascii_digit())) {
            &line[dot + 2..]
        } else if line.starts_with('(') && line.ends_with(')') {
            // "(none)", "(none yet)"
            continue;
        } else {
            break;
        };
        let item = item.trim();
        if !item.is_empty() {
            items.push(item.to_string());
        }
    }
    items
}

/// Fenced code blocks of `text`: `(info string, content)` in order. An unclosed block runs to
/// the end of the text.
pub(crate) fn fenced_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Vec<&str>)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match open.take() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((info.trim().to_string(), Vec::new()));
                }
            }
            Some((info, mut lines)) => {
                if trimmed.starts_with("```") {
                    blocks.push((info, lines.join("\n")));
                } else {
                    lines.push(line);
                    open = Some((info, lines));
                }
            }
        }
    }
    if let Some((info, lines)) = open {
        blocks.push((info, lines.join("\n")));
    }
    blocks
}

/// The JSON blocks of a message, parsed; blocks that do not parse are skipped.
pub(crate) fn json_blocks(text: &str) -> Vec<serde_json::Value> {
    fenced_blocks(text)
        .into_iter()
        .filter(|(info, body)| info.is_empty() || info == "json" || body.trim_start().starts_with('{'))
        .filter_map(|(_, body)| serde_json::from_str(body.trim()).ok())
        .collect()
}

/// The JSON block that follows the first occurrence of `label` in `text`.
pub(crate) fn json_block_after(text: &str, label: &str) -> Option<serde_json::Value> {
    let start = text.find(label)?;
    json_blocks(&text[start..]).into_iter().next()
}

/// Optimal-string-alignment distance: edits, where swapping two adjacent characters is one edit.
pub(crate) fn osa_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[n][m]
}

/// The candidate closest to `word` (never `word` itself), if within `max_distance` edits.
pub(crate) fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>, max_distance: usize) -> Option<&'a str> {
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (osa_distance(word, c), c))
        .filter(|(d, _)| *d <= max_distance)
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)))
        .map(|(_, c)| c)
}

/// Every substring between a pair of `quote` characters, left to right.
pub(crate) fn quoted(text: &str, quote: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(quote) {
        let after = &rest[open + quote.len_utf8()..];
        let Some(close) = after.find(quote) else { break };
        out.push(&after[..close]);
        rest = &after[close + quote.len_utf8()..];
    }
    out
}

/// Words of `text` joined in lowerCamelCase, keeping only ASCII letters and digits.
pub(crate) fn camel_case(text: &str) -> String {
    let mut out = String::new();
    for word in text.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
        let mut chars = word.chars();
        let first = chars.next().expect("non-empty word");
        if out.is_empty() {
            out.extend(first.to_lowercase());
            out.push_str(&chars.as_str().to_lowercase());
        } else {
            out.extend(first.to_uppercase());
            out.push_str(&chars.as_str().to_lowercase());
        }
    }
    if out.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        out.insert(0, 't');
    }
    out
}

/// Title case for a phrase inside a title: every word capitalised except short joining words
/// (also at the start, since the phrase follows other words).
pub(crate) fn title_case(text: &str) -> String {
    const SMALL: [&str; 11] = ["a", "an", "and", "at", "for", "from", "in", "of", "on", "the", "with"];
    text.split(' ').map(|word| if SMALL.contains(&word) { word.to_string() } else { capitalise(word) }).collect::<Vec<_>>().join(" ")
}

/// The text with its first character upper-cased.
pub(crate) fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Lower-cased words, for comparing titles loosely.
pub(crate) fn normalise(text: &str) -> String {
    text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

/// A number as a person writes a score: four decimals for small values, fewer for large ones.
pub(crate) fn score(x: f64) -> String {
    if x.abs() >= 100.0 { format!("{x:.2}") } else { format!("{x:.4}") }
}

/// Removes characters that must not appear in a task description (braces are reserved for the
/// `{dataset_docs}` placeholder).
pub(crate) fn without_braces(text: &str) -> String {
    text.chars().filter(|c| *c != '{' && *c != '}').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labelled_lines_and_lists() {
        let text = "Domain: botany\nTask type: classification\n\nIdeas already taken (do not repeat them):\n- A\n- B c\n";
        assert_eq!(labelled_line(text, "Task type:").as_deref(), Some("classification"));
        let items = bullet_items(block_after(text, "Ideas already taken").unwrap());
        assert_eq!(items, vec!["A", "B c"]);
        assert!(bullet_items("(none yet)").is_empty());
        assert_eq!(bullet_items("1. x\n2. y\nafter"), vec!["x", "y"]);
    }

    #[test]
    fn finds_fenced_blocks() {
        let text = "a\n```json\n{\"x\": 1}\n```\nb\n```\nls\n```\n";
        let blocks = fenced_blocks(text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].0, "json");
        assert_eq!(blocks[1].1, "ls");
        assert_eq!(json_blocks(text).len(), 1);
    }

    #[test]
    fn distances_count_transpositions_as_one_edit() {
        assert_eq!(osa_distance("lenght", "length"), 1);
        assert_eq!(osa_distance("answer", "answers"), 1);
        assert_eq!(osa_distance("", "abc"), 3);
        assert_eq!(closest("aeg", ["age", "sex", "bmi"], 2), Some("age"));
        assert_eq!(closest("zzzzzz", ["age"], 2), None);
    }

    #[test]
    fn case_helpers() {
        assert_eq!(camel_case("Iris species: few labels!"), "irisSpeciesFewLabels");
        assert_eq!(title_case("species identification from leaf shape"), "Species Identification from Leaf Shape");
        assert_eq!(title_case("a panel of chemical constituents"), "a Panel of Chemical Constituents");
        assert_eq!(quoted("a 'x' b 'y'", '\''), vec!["x", "y"]);
        assert_eq!(without_braces("a {b} c"), "a b c");
    }

    #[test]
    fn draws_are_deterministic() {
        let a: Vec<u64> = (0..3).map(|_| 0).scan(Draw::new(7, &["x"]), |d, _| Some(d.next_u64())).collect();
        let b: Vec<u64> = (0..3).map(|_| 0).scan(Draw::new(7, &["x"]), |d, _| Some(d.next_u64())).collect();
        let c: Vec<u64> = (0..3).map(|_| 0).scan(Draw::new(8, &["x"]), |d, _| Some(d.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
