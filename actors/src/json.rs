//! Reading a JSON object out of what a model actually says.
//!
//! Models wrap JSON in prose or a fenced block, put a `<think>` section first, write a draft and
//! then a correction, write Python literals (`'single quotes'`, `True`, `None`), break lines
//! inside strings, and put numbers in strings. [`extract`] takes the *last* complete top-level
//! object that fits the expected type, so a correction wins over its draft; it repairs the
//! Python and raw-newline spellings, and, given the stage's JSON Schema, coerces what is
//! unambiguous (`"600"` where an integer is expected). When nothing fits it explains what was
//! wrong, naming the field, so the explanation can be sent back to the model.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Extracts the last JSON object in `text` that fits `T` (after coercion by `schema`, if given).
pub fn extract<T: DeserializeOwned>(text: &str, schema: Option<&Value>) -> Result<T, String> {
    let text = strip_think(text);
    let candidates = objects(&text);
    if candidates.is_empty() {
        return Err(match text.find('{') {
            Some(start) => match serde_json::from_str::<Value>(&text[start..]) {
                Err(e) if e.is_eof() => "the JSON object is not complete (the answer ends inside it)".to_string(),
                Err(e) => format!("invalid JSON: {e}"),
                Ok(_) => "the answer contains no JSON object".to_string(),
            },
            None => "the answer contains no JSON object".to_string(),
        });
    }
    let mut last_error = None;
    for mut value in candidates.into_iter().rev() {
        let mut coerced = Vec::new();
        // A required key that is absent is for the type to judge (serde knows its defaults);
        // when the type refuses, the error names the absent keys.
        let mut missing = Vec::new();
        if let Some(schema) = schema
            && let Err(problems) = coerce(&mut value, schema, "", &mut coerced, &mut missing)
        {
            missing.push(problems);
            last_error.get_or_insert_with(|| format!("the JSON object does not have the expected shape: {}", missing.join("; ")));
            continue;
        }
        match serde_json::from_value::<T>(value) {
            Ok(parsed) => {
                if !coerced.is_empty() {
                    tracing::debug!(coerced = %coerced.join("; "), "coerced an LLM answer to its schema");
                }
                return Ok(parsed);
            }
            Err(e) => {
                let why = if missing.is_empty() { e.to_string() } else { missing.join("; ") };
                last_error.get_or_insert_with(|| format!("the JSON object does not have the expected shape: {why}"));
            }
        }
    }
    Err(last_error.expect("at least one candidate was tried"))
}

/// Removes every `<think>...</think>` (or `<thinking>`) section, and an unclosed one to the end.
fn strip_think(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let open = ["<think>", "<thinking>"].iter().filter_map(|tag| rest.find(tag).map(|i| (i, *tag))).min();
        let Some((at, tag)) = open else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        let close = if tag == "<think>" { "</think>" } else { "</thinking>" };
        match rest[at..].find(close) {
            Some(end) => rest = &rest[at + end + close.len()..],
            None => return out,
        }
    }
}

/// Every complete top-level JSON object in `text`, in order. An object that is not strict JSON
/// is repaired ([`repair`]) before it is given up; objects nested in a found one are not listed.
fn objects(text: &str) -> Vec<Value> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find('{') {
        let start = from + offset;
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(value @ Value::Object(_))) = stream.next() {
            found.push(value);
            from = start + stream.byte_offset();
            continue;
        }
        if let Some(end) = matching_brace(&text[start..])
            && let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(&repair(&text[start..start + end]))
        {
            found.push(value);
            from = start + end;
            continue;
        }
        from = start + 1;
    }
    found
}

/// The length of the brace-balanced span that starts at `text[0] == '{'`, with strings in
/// double or single quotes skipped.
fn matching_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Rewrites near-JSON into JSON: single-quoted strings, Python's `True`/`False`/`None`,
/// trailing commas, raw control characters and unknown escapes inside strings.
fn repair(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                i = repair_string(&chars, i, &mut out);
                continue;
            }
            ',' => {
                let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
                if !matches!(next, Some('}' | ']')) {
                    out.push(',');
                }
            }
            c if c.is_ascii_alphabetic() => {
                let word: String = chars[i..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').collect();
                out.push_str(match word.as_str() {
                    "True" => "true",
                    "False" => "false",
                    "None" => "null",
                    other => other,
                });
                i += word.chars().count();
                continue;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Copies the string literal opening at `chars[start]` as a JSON string; returns the index after it.
fn repair_string(chars: &[char], start: usize, out: &mut String) -> usize {
    let quote = chars[start];
    out.push('"');
    let mut i = start + 1;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                let next = chars[i + 1];
                match next {
                    '\'' => out.push('\''),
                    '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' | 'u' => {
                        out.push('\\');
                        out.push(next);
                    }
                    other => {
                        out.push_str("\\\\");
                        out.push(other);
                    }
                }
                i += 2;
                continue;
            }
            c if c == quote => {
                out.push('"');
                return i + 1;
            }
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
        i += 1;
    }
    out.push('"');
    i
}

/// Coerces `value` towards `schema` where the intent is unambiguous, noting each change in
/// `coerced` and each absent required key in `missing`. `Err` lists what cannot be made to fit,
/// by field.
fn coerce(value: &mut Value, schema: &Value, path: &str, coerced: &mut Vec<String>, missing: &mut Vec<String>) -> Result<(), String> {
    let field = if path.is_empty() { "the answer".to_string() } else { format!("`{path}`") };
    let mut note = |what: &str| coerced.push(format!("{field}: {what}"));
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if let Value::String(s) = value
            && !allowed.iter().any(|a| a.as_str() == Some(s))
        {
            let matching = allowed.iter().filter_map(Value::as_str).find(|a| a.eq_ignore_ascii_case(s.trim()));
            match matching {
                Some(a) => {
                    note(&format!("{s:?} read as {a:?}"));
                    *value = Value::String(a.to_string());
                }
                None => {
                    let names: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                    return Err(format!("{field} must be one of {}, got {s:?}", names.join(", ")));
                }
            }
        }
        return Ok(());
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Value::Object(map) = value else {
                return Err(format!("{field} must be an object, got {}", kind(value)));
            };
            let mut problems = Vec::new();
            for required in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                if !map.contains_key(required) {
                    missing.push(format!("`{}` is missing", join(path, required)));
                }
            }
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, property) in properties {
                    if let Some(v) = map.get_mut(name)
                        && let Err(e) = coerce(v, property, &join(path, name), coerced, missing)
                    {
                        problems.push(e);
                    }
                }
            }
            if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
        }
        Some("array") => {
            if let Value::String(s) = value {
                note("a single string read as a list of one");
                *value = Value::Array(vec![Value::String(std::mem::take(s))]);
            }
            let Value::Array(items) = value else {
                return Err(format!("{field} must be a list, got {}", kind(value)));
            };
            let Some(item_schema) = schema.get("items") else { return Ok(()) };
            let problems: Vec<String> = items
                .iter_mut()
                .enumerate()
                .filter_map(|(i, item)| coerce(item, item_schema, &format!("{path}[{i}]"), coerced, missing).err())
                .collect();
            if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
        }
        Some("integer") => {
            let integer = match value {
                Value::Number(n) if n.is_i64() || n.is_u64() => return Ok(()),
                Value::Number(n) => n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64),
                Value::String(s) => {
                    let t = s.trim();
                    t.parse::<i64>().ok().or_else(|| t.parse::<f64>().ok().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64))
                }
                _ => None,
            };
            match integer {
                Some(n) => {
                    note(&format!("{value} read as {n}"));
                    *value = Value::from(n);
                    Ok(())
                }
                None => Err(format!("{field} must be an integer, got {}", shown(value))),
            }
        }
        Some("number") => match value {
            Value::Number(_) => Ok(()),
            Value::String(s) => match s.trim().parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                Some(n) => {
                    note(&format!("{s:?} read as {n}"));
                    *value = Value::Number(n);
                    Ok(())
                }
                None => Err(format!("{field} must be a number, got {}", shown(value))),
            },
            _ => Err(format!("{field} must be a number, got {}", shown(value))),
        },
        Some("boolean") => match value {
            Value::Bool(_) => Ok(()),
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") || s.trim().eq_ignore_ascii_case("false") => {
                let b = s.trim().eq_ignore_ascii_case("true");
                note(&format!("{s:?} read as {b}"));
                *value = Value::Bool(b);
                Ok(())
            }
            _ => Err(format!("{field} must be true or false, got {}", shown(value))),
        },
        Some("string") => match value {
            Value::String(_) => Ok(()),
            Value::Number(_) | Value::Bool(_) => {
                note(&format!("{value} read as text"));
                *value = Value::String(value.to_string());
                Ok(())
            }
            _ => Err(format!("{field} must be text, got {}", kind(value))),
        },
        _ => Ok(()),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_string() } else { format!("{path}.{name}") }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A value as the error shows it: short scalars in full, containers by kind.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{:?}", s.chars().take(60).collect::<String>()),
        Value::Number(_) | Value::Bool(_) | Value::Null => value.to_string(),
        other => kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, Debug, PartialEq)]
    struct T {
        a: u32,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Bundle {
        name: String,
        timeout: u64,
        ratio: f64,
        strict: bool,
        direction: String,
        tags: Vec<String>,
    }

    fn bundle_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": { "type": "string" },
                "timeout": { "type": "integer", "minimum": 1 },
                "ratio": { "type": "number" },
                "strict": { "type": "boolean" },
                "direction": { "type": "string", "enum": ["maximize", "minimize"] },
                "tags": { "type": "array", "items": { "type": "string" } },
            },
            "required": ["name", "timeout", "ratio", "strict", "direction", "tags"],
        })
    }

    fn bundle(text: &str) -> Result<Bundle, String> {
        extract::<Bundle>(text, Some(&bundle_schema()))
    }

    #[test]
    fn plain_fenced_prose_and_think() {
        assert_eq!(extract::<T>("{\"a\": 1}", None).unwrap(), T { a: 1 });
        assert_eq!(extract::<T>("Sure!\n```json\n{\"a\": 2}\n```\nDone", None).unwrap(), T { a: 2 });
        assert_eq!(extract::<T>("<think>{\"a\": 9} hmm</think>{\"a\": 3}", None).unwrap(), T { a: 3 });
    }

    #[test]
    fn braces_in_a_think_section_are_ignored_even_after_the_answer() {
        assert_eq!(extract::<T>("<think>I need {a} like {\"a\": 7</think>\n{\"a\": 5}", None).unwrap(), T { a: 5 });
        assert_eq!(extract::<T>("{\"a\": 5}\n<thinking>or {\"a\": 6}?</thinking>", None).unwrap(), T { a: 5 });
        assert_eq!(extract::<T>("{\"a\": 4} <think>unfinished {\"a\": 8}", None).unwrap(), T { a: 4 });
    }

    #[test]
    fn the_last_object_that_fits_wins_over_a_draft() {
        assert_eq!(extract::<T>("Draft: {\"a\": 1}. Actually, corrected: {\"a\": 2}", None).unwrap(), T { a: 2 });
        assert_eq!(
            extract::<T>("{\"a\": 4} and an aside {\"b\": 1}", None).unwrap(),
            T { a: 4 },
            "a later object of another shape does not win"
        );
    }

    #[test]
    fn objects_nested_in_a_found_object_are_not_candidates() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Outer {
            inner: T,
        }
        // The inner object fits `T` too, but it is part of the answer, not an answer.
        assert!(extract::<T>("{\"inner\": {\"a\": 1}}", None).is_err());
        assert_eq!(extract::<Outer>("{\"inner\": {\"a\": 1}}", None).unwrap(), Outer { inner: T { a: 1 } });
    }

    #[test]
    fn python_literals_raw_newlines_and_crlf_are_repaired() {
        let python =
            "{'name': 'it\\'s \"quoted\"', 'timeout': 600, 'ratio': 0.5, 'strict': True, 'direction': 'maximize', 'tags': ['a', 'b',],}";
        let b = bundle(python).unwrap();
        assert_eq!(b.name, "it's \"quoted\"");
        assert!(b.strict);
        assert_eq!(b.tags, ["a", "b"]);
        let raw = concat!(
            "{\r\n  \"name\": \"line one\r\nline two\tdone\",\r\n  \"timeout\": 5, \"ratio\": 1, \"strict\": false,\r\n",
            "  \"direction\": \"minimize\", \"tags\": []\r\n}"
        );
        assert_eq!(bundle(raw).unwrap().name, "line one\r\nline two\tdone");
        assert_eq!(extract::<Value>("{'x': None}", None).unwrap(), json!({"x": null}));
    }

    #[test]
    fn non_ascii_text_is_kept() {
        let b = bundle(concat!(
            "{\"name\": \"données über 数据 — ok\", \"timeout\": 1, \"ratio\": 1, ",
            "\"strict\": true, \"direction\": \"maximize\", \"tags\": [\"é\"]}"
        ))
        .unwrap();
        assert_eq!(b.name, "données über 数据 — ok");
        assert_eq!(b.tags, ["é"]);
    }

    #[test]
    fn unambiguous_values_are_coerced_to_the_schema() {
        let b = bundle(concat!(
            "{\"name\": 7, \"timeout\": \"600\", \"ratio\": \"0.25\", ",
            "\"strict\": \"True\", \"direction\": \"Maximize\", \"tags\": \"solo\"}"
        ))
        .unwrap();
        assert_eq!(
            b,
            Bundle { name: "7".into(), timeout: 600, ratio: 0.25, strict: true, direction: "maximize".into(), tags: vec!["solo".into()] }
        );
        assert_eq!(
            bundle("{\"name\": \"n\", \"timeout\": 600.0, \"ratio\": 1, \"strict\": false, \"direction\": \"minimize\", \"tags\": []}")
                .unwrap()
                .timeout,
            600
        );
    }

    #[test]
    fn what_cannot_be_coerced_is_named_by_field() {
        let e = bundle(
            "{\"name\": \"n\", \"timeout\": \"ten minutes\", \"ratio\": 1, \"strict\": \"maybe\", \"direction\": \"up\", \"tags\": []}",
        )
        .unwrap_err();
        assert!(e.contains("`timeout` must be an integer, got \"ten minutes\""), "{e}");
        assert!(e.contains("`strict` must be true or false"), "{e}");
        assert!(e.contains("`direction` must be one of maximize, minimize, got \"up\""), "{e}");
        let e = bundle("{\"name\": \"n\"}").unwrap_err();
        assert!(e.contains("`timeout` is missing"), "{e}");
    }

    #[test]
    fn a_required_key_the_type_defaults_may_be_absent() {
        #[derive(Deserialize)]
        struct WithDefault {
            #[serde(default)]
            title: String,
            a: u32,
        }
        let schema =
            json!({"type": "object", "properties": {"title": {"type": "string"}, "a": {"type": "integer"}}, "required": ["title", "a"]});
        let parsed = extract::<WithDefault>("{\"a\": \"3\"}", Some(&schema)).unwrap();
        assert_eq!((parsed.title.as_str(), parsed.a), ("", 3));
    }

    #[test]
    fn explains_failures() {
        assert!(extract::<T>("no json here", None).unwrap_err().contains("no JSON"));
        assert!(extract::<T>("{\"a\": ", None).unwrap_err().contains("not complete"));
        assert!(extract::<T>("{\"a\": \"x\"}", None).unwrap_err().contains("expected shape"));
    }
}
