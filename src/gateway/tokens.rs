//! Prompt token counts before sending, with a real tokenizer (tiktoken's `o200k_base`, embedded,
//! no network). Other models' tokenizers differ by some percent; the limiter reconciles with
//! each response's `usage`.
//!
//! Counts are cached per message text: an agent re-sends its whole history every step, and
//! the system prompts repeat across units, so most messages are counted once.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use dashmap::DashMap;
use gymforge_actors::ports::ChatMessage;

/// Cached counts, keyed by a hash of the text. Cleared when full, which bounds its memory.
static CACHE: LazyLock<DashMap<u64, u64>> = LazyLock::new(DashMap::new);
const CACHE_ENTRIES: usize = 50_000;
static HASHER: LazyLock<std::collections::hash_map::RandomState> = LazyLock::new(Default::default);

/// Tokens OpenAI adds per message (role and separators) and per request (the reply primer).
pub const PER_MESSAGE: u64 = 4;
const PER_REQUEST: u64 = 3;

/// Estimated prompt tokens of a chat request.
pub fn prompt_tokens(messages: &[ChatMessage]) -> u64 {
    PER_REQUEST + messages.iter().map(|m| text_tokens(&m.content) + PER_MESSAGE).sum::<u64>()
}

/// Tokens of one text.
pub fn text_tokens(text: &str) -> u64 {
    let key = HASHER.hash_one(text);
    if let Some(n) = CACHE.get(&key) {
        return *n;
    }
    let n = tiktoken_rs::o200k_base_singleton().encode_ordinary(text).len() as u64;
    if CACHE.len() >= CACHE_ENTRIES {
        CACHE.clear();
    }
    CACHE.insert(key, n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_real_tokens() {
        let one = prompt_tokens(&[ChatMessage::new("user", "hello")]);
        assert_eq!(one, PER_REQUEST + PER_MESSAGE + 1, "`hello` is one token");
        let long = prompt_tokens(&[ChatMessage::new("user", "the quick brown fox jumps over the lazy dog ".repeat(100))]);
        assert!((800..1200).contains(&long), "{long}");
    }
}
