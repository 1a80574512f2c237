//! Near-duplicate detection for topic ideas: word-shingle MinHash signatures.
//!
//! A text is normalised (lower case, words of letters and digits), cut into overlapping word
//! shingles of [`SHINGLE_WORDS`] words, and summarised by [`PERMUTATIONS`] minimum hash values,
//! one per random permutation of the shingle space. The share of positions where two
//! signatures agree estimates the Jaccard similarity of the two shingle sets (standard error
//! about `sqrt(J(1-J)/PERMUTATIONS)`, under 0.045), so comparing a new idea with every earlier
//! one costs a fixed-size comparison per idea, whatever the texts' lengths.
//!
//! An [`Index`] finds the near duplicates of a text among many without comparing it with each:
//! locality-sensitive hashing cuts a signature into [`BANDS`] bands of [`ROWS`] values, and two
//! texts become candidates when any band is equal. A pair at similarity `J` is a candidate with
//! probability `1 - (1 - J^ROWS)^BANDS`: 0.988 at 0.6, 0.9998 at 0.7, 0.06 at 0.3; candidates
//! are then compared in full. The cost of a lookup depends on the candidates, not on the
//! number of texts indexed.

use std::collections::{BTreeSet, HashMap};

use crate::seed::{hash, splitmix};

/// Words per shingle.
pub const SHINGLE_WORDS: usize = 3;
/// Hash functions (permutations) per signature.
pub const PERMUTATIONS: usize = 128;

/// The Mersenne prime 2^61 - 1: the permutations are `(a * x + b) mod P`.
const P: u64 = (1 << 61) - 1;

/// The MinHash signature of one text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    minima: Vec<u64>,
    /// An empty text has no shingles; two empty texts count as identical.
    empty: bool,
}

impl Signature {
    pub fn of(text: &str) -> Signature {
        let shingles = shingles(text);
        let mut minima = vec![u64::MAX; PERMUTATIONS];
        for shingle in &shingles {
            let x = hash(&[shingle]) % P;
            for (i, (a, b)) in permutations().enumerate() {
                let y = mul_add_mod(a, x, b);
                if y < minima[i] {
                    minima[i] = y;
                }
            }
        }
        Signature { minima, empty: shingles.is_empty() }
    }

    /// Estimated Jaccard similarity of the two texts' shingle sets, in [0, 1].
    pub fn jaccard(&self, other: &Signature) -> f64 {
        match (self.empty, other.empty) {
            (true, true) => return 1.0,
            (true, false) | (false, true) => return 0.0,
            _ => {}
        }
        let equal = self.minima.iter().zip(&other.minima).filter(|(x, y)| x == y).count();
        equal as f64 / PERMUTATIONS as f64
    }
}

/// Bands of the locality-sensitive index, and signature values per band.
pub const BANDS: usize = 32;
pub const ROWS: usize = PERMUTATIONS / BANDS;

/// Signatures of many texts, each under a key, findable by similarity.
#[derive(Default)]
pub struct Index<K> {
    entries: Vec<(K, Signature)>,
    /// `(band, hash of its values)` -> entries with that band.
    buckets: HashMap<(usize, u64), Vec<usize>>,
}

impl<K: Clone + Ord> Index<K> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn insert(&mut self, key: K, signature: Signature) {
        let at = self.entries.len();
        for band in 0..BANDS {
            self.buckets.entry((band, signature.band_hash(band))).or_default().push(at);
        }
        self.entries.push((key, signature));
    }

    /// The entry most similar to `signature` among those `admit` accepts, when its estimated
    /// similarity is at least `threshold`.
    pub fn most_similar(&self, signature: &Signature, threshold: f64, admit: impl Fn(&K) -> bool) -> Option<(&K, f64)> {
        let mut seen = BTreeSet::new();
        for band in 0..BANDS {
            if let Some(bucket) = self.buckets.get(&(band, signature.band_hash(band))) {
                seen.extend(bucket.iter().copied());
            }
        }
        seen.into_iter()
            .map(|i| &self.entries[i])
            .filter(|(key, _)| admit(key))
            .map(|(key, s)| (key, signature.jaccard(s)))
            .filter(|(_, j)| *j >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(a.0)))
    }
}

impl Signature {
    fn band_hash(&self, band: usize) -> u64 {
        if self.empty {
            return u64::MAX;
        }
        self.minima[band * ROWS..(band + 1) * ROWS].iter().fold(band as u64, |h, v| splitmix(h ^ v))
    }
}

/// The word shingles of a normalised text; a text shorter than one shingle is one shingle.
pub fn shingles(text: &str) -> BTreeSet<String> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        return BTreeSet::new();
    }
    if words.len() < SHINGLE_WORDS {
        return BTreeSet::from([words.join(" ")]);
    }
    words.windows(SHINGLE_WORDS).map(|w| w.join(" ")).collect()
}

/// Exact Jaccard similarity of the shingle sets (what the signatures estimate).
pub fn exact_jaccard(a: &str, b: &str) -> f64 {
    let (sa, sb) = (shingles(a), shingles(b));
    if sa.is_empty() && sb.is_empty() {
        return 1.0;
    }
    sa.intersection(&sb).count() as f64 / sa.union(&sb).count() as f64
}

/// The fixed coefficients `(a, b)` of each permutation, `1 <= a < P`, `0 <= b < P`; derived
/// from constants so signatures are comparable across processes and runs.
fn permutations() -> impl Iterator<Item = (u64, u64)> {
    (0..PERMUTATIONS as u64).map(|i| {
        let a = splitmix(0x6d69_6e68_6173_6800 ^ i) % (P - 1) + 1;
        let b = splitmix(0x6d69_6e68_6173_6801 ^ (i << 32)) % P;
        (a, b)
    })
}

/// `(a * x + b) mod P` without overflow.
fn mul_add_mod(a: u64, x: u64, b: u64) -> u64 {
    ((u128::from(a) * u128::from(x) + u128::from(b)) % u128::from(P)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_texts_agree_everywhere() {
        let t = "Predict the wine cultivar from a chemical analysis of thirteen constituents";
        assert_eq!(Signature::of(t).jaccard(&Signature::of(t)), 1.0);
        // Case and punctuation do not matter.
        let shouted = "PREDICT the wine-cultivar, from a chemical analysis of thirteen constituents!";
        assert_eq!(Signature::of(t).jaccard(&Signature::of(shouted)), 1.0);
    }

    #[test]
    fn estimates_follow_the_exact_jaccard() {
        let base: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
        // Replace a growing tail of words: the exact similarity falls from 1 towards 0.
        for changed in [0usize, 5, 15, 30, 45, 60] {
            let mut other = base.clone();
            for w in other.iter_mut().skip(60 - changed) {
                w.push('x');
            }
            let (a, b) = (base.join(" "), other.join(" "));
            let exact = exact_jaccard(&a, &b);
            let estimate = Signature::of(&a).jaccard(&Signature::of(&b));
            // Five standard errors of a 128-permutation estimate at worst (J = 0.5).
            assert!((estimate - exact).abs() <= 0.23, "{changed} changed: exact {exact}, estimate {estimate}");
        }
    }

    #[test]
    fn near_duplicates_score_high_and_different_ideas_low() {
        let rest = "from chemical analysis with few labels. Only a quarter of the training rows are labelled, so self-training pays off.";
        let (a, b) = (format!("Predict wine cultivar {rest}"), format!("Predict the wine cultivar {rest}"));
        let (a, b) = (a.as_str(), b.as_str());
        let c = "Forecast disease progression from patient vitals under a compute budget, scored by RMSE on a held-out split.";
        let (sa, sb, sc) = (Signature::of(a), Signature::of(b), Signature::of(c));
        assert!(sa.jaccard(&sb) >= 0.6, "{}", sa.jaccard(&sb));
        assert!(sa.jaccard(&sc) < 0.1, "{}", sa.jaccard(&sc));
    }

    #[test]
    fn the_index_finds_near_duplicates_among_many_and_ignores_the_rest() {
        let mut index = Index::default();
        for i in 0..2000u32 {
            let text = format!("idea {i} about topic {} with twist {} scored by metric {}", i * 7, i * 13, i * 31);
            index.insert(i, Signature::of(&text));
        }
        let near = Signature::of("idea 1234 about topic 8638 with twist 16042 scored by metric 38254 today");
        let (key, j) = index.most_similar(&near, 0.6, |_| true).expect("its near duplicate is found");
        assert_eq!(*key, 1234);
        assert!(j >= 0.6, "{j}");
        assert!(index.most_similar(&near, 0.6, |k| *k < 1000).is_none(), "keys the filter refuses are not answers");
        let other = Signature::of("forecast grid load from weather with a compute budget");
        assert!(index.most_similar(&other, 0.6, |_| true).is_none());
        assert_eq!(index.len(), 2000);
    }

    #[test]
    fn empty_and_short_texts() {
        assert_eq!(Signature::of("").jaccard(&Signature::of("  ... ")), 1.0);
        assert_eq!(Signature::of("").jaccard(&Signature::of("iris")), 0.0);
        assert_eq!(shingles("two words"), BTreeSet::from(["two words".to_string()]));
        assert_eq!(shingles("a b c d").len(), 2);
    }

    #[test]
    fn signatures_are_stable_across_calls() {
        let t = "Species identification from petal and sepal measurements";
        assert_eq!(Signature::of(t), Signature::of(t));
        assert_eq!(Signature::of(t).minima.len(), PERMUTATIONS);
    }
}
