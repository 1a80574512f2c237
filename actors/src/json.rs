//! Reading a JSON object out of what a model actually says.
//!
//! Models wrap JSON in prose, in a fenced block, or after a `<think>` section. This finds the
//! first JSON object that parses into the expected type and explains what was wrong otherwise,
//! so the explanation can be sent back to the model.

use serde::de::DeserializeOwned;

/// Extracts and deserialises the first JSON object in `text` that fits `T`.
pub fn extract<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let text = strip_think(text);
    let mut first_error: Option<String> = None;
    for (start, _) in text.match_indices('{') {
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<serde_json::Value>();
        match stream.next() {
            Some(Ok(value)) => match serde_json::from_value::<T>(value) {
                Ok(parsed) => return Ok(parsed),
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("the JSON object does not have the expected shape: {e}"));
                }
            },
            Some(Err(e)) => {
                first_error.get_or_insert_with(|| format!("invalid JSON: {e}"));
            }
            None => {}
        }
    }
    Err(first_error.unwrap_or_else(|| "the answer contains no JSON object".to_string()))
}

/// Drops a leading `<think>...</think>` section (reasoning models emit one).
fn strip_think(text: &str) -> &str {
    match (text.find("<think>"), text.find("</think>")) {
        (Some(open), Some(close)) if open < close => &text[close + "</think>".len()..],
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct T {
        a: u32,
    }

    #[test]
    fn plain_fenced_prose_and_think() {
        assert_eq!(extract::<T>("{\"a\": 1}").unwrap(), T { a: 1 });
        assert_eq!(extract::<T>("Sure!\n```json\n{\"a\": 2}\n```\nDone").unwrap(), T { a: 2 });
        assert_eq!(extract::<T>("<think>{\"a\": 9} hmm</think>{\"a\": 3}").unwrap(), T { a: 3 });
    }

    #[test]
    fn skips_objects_of_the_wrong_shape() {
        assert_eq!(extract::<T>("{\"b\": 1} then {\"a\": 4}").unwrap(), T { a: 4 });
    }

    #[test]
    fn explains_failures() {
        assert!(extract::<T>("no json here").unwrap_err().contains("no JSON"));
        assert!(extract::<T>("{\"a\": ").unwrap_err().contains("invalid JSON"));
        assert!(extract::<T>("{\"a\": \"x\"}").unwrap_err().contains("expected shape"));
    }
}
