//! Deterministic hashing and random numbers.
//!
//! Everything random in a run derives from the run seed and stable names (unit ids, stages), so
//! a resumed or repeated run makes the same choices. The functions are our own so their output
//! never changes with a dependency upgrade.

/// FNV-1a over the bytes of every part, with a separator between parts.
pub fn hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    splitmix(h)
}

/// One step of splitmix64: a good 64-bit mixer.
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform float in [0, 1) from a hash.
pub fn unit_float(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The one retry backoff: `base` doubled per attempt (the first waits `base`), capped at `cap`,
/// less up to a quarter of jitter drawn from `key` (what is retried), so that units retried
/// together spread out and a rerun waits the same.
pub fn backoff(attempt: u32, base: std::time::Duration, cap: std::time::Duration, key: &[&str]) -> std::time::Duration {
    let full = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(cap);
    let attempt = attempt.to_string();
    let parts: Vec<&str> = key.iter().copied().chain([attempt.as_str()]).collect();
    full.mul_f64(1.0 - 0.25 * unit_float(hash(&parts)))
}

/// A small deterministic generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    pub fn next_f64(&mut self) -> f64 {
        unit_float(self.next_u64())
    }

    /// Picks an index with probability proportional to its weight.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        if total <= 0.0 {
            return 0;
        }
        let mut x = self.next_f64() * total;
        for (i, w) in weights.iter().enumerate() {
            if *w <= 0.0 {
                continue;
            }
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_separates_parts() {
        assert_eq!(hash(&["a", "b"]), hash(&["a", "b"]));
        assert_ne!(hash(&["ab", ""]), hash(&["a", "b"]));
    }

    #[test]
    fn weighted_follows_weights() {
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[rng.weighted(&[1.0, 0.0, 3.0])] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!(counts[2] > counts[0] * 2, "{counts:?}");
    }

    #[test]
    fn backoff_doubles_is_capped_and_jitters_by_key() {
        use std::time::Duration;
        let (base, cap) = (Duration::from_millis(500), Duration::from_secs(8));
        let d = |attempt: u32, key: &str| backoff(attempt, base, cap, &[key]);
        assert!(d(1, "a") <= base && d(1, "a") >= base.mul_f64(0.75));
        assert!(d(3, "a") > Duration::from_millis(1400) && d(3, "a") <= Duration::from_secs(2));
        assert!(d(40, "a") <= cap && d(40, "a") >= cap.mul_f64(0.75));
        assert_eq!(d(2, "a"), d(2, "a"), "a pure function of the key and the attempt");
        assert!((0..20).map(|i| d(2, &i.to_string())).collect::<std::collections::BTreeSet<_>>().len() > 10, "keys spread out");
    }
}
