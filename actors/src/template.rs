//! Prompt templates: `{{name}}` placeholders filled from a list of values.
//!
//! Deliberately tiny: prompts live in `config/prompts/` as plain text, and a placeholder that
//! has no value is an error rather than a silent gap in a prompt.

/// Fills every `{{name}}` in `template`. Fails on a placeholder without a value.
pub fn render(template: &str, values: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("unclosed `{{` in prompt template".to_string());
        };
        let name = after[..end].trim();
        let value = values
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("prompt template uses `{{{{{name}}}}}` but no value was given"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn fills_placeholders_and_keeps_single_braces() {
        let t = "a {{x}} b {dataset_docs} {{ y }}";
        assert_eq!(render(t, &[("x", "1"), ("y", "2")]).unwrap(), "a 1 b {dataset_docs} 2");
    }

    #[test]
    fn missing_value_is_an_error() {
        assert!(render("{{nope}}", &[]).unwrap_err().contains("nope"));
    }
}
