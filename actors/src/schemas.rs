//! JSON Schemas of the answers the JSON-speaking stages expect, sent as `response_format` to
//! endpoints that support structured output. They mirror the serde types the answers are parsed
//! into; `tests` below checks each one against its type.

use serde_json::{Value, json};

/// The topic stage's `{"title", "idea"}`.
pub fn topic_idea() -> (&'static str, Value) {
    ("topic_idea", object(json!({ "title": string(), "idea": string() })))
}

/// The dataset stage's `{"datasets": [...]}`.
pub fn dataset_proposals() -> (&'static str, Value) {
    ("dataset_proposals", object(json!({ "datasets": { "type": "array", "items": string() } })))
}

/// The codegen and debug stages' task bundle ([`crate::model::TaskBundle`]).
pub fn task_bundle() -> (&'static str, Value) {
    let files = object(json!({ "prepare.py": string(), "baseline.py": string(), "evaluate.py": string() }));
    (
        "task_bundle",
        object(json!({
            "name": string(),
            "title": string(),
            "description": string(),
            "dataset_description": string(),
            "priority_metric": string(),
            "direction": { "type": "string", "enum": ["maximize", "minimize"] },
            "metrics": { "type": "array", "items": string() },
            "target_column": string(),
            "training_timeout": { "type": "integer", "minimum": 1 },
            "files": files,
        })),
    )
}

fn string() -> Value {
    json!({ "type": "string" })
}

/// A closed object whose every property is required (what OpenAI's strict mode demands).
fn object(properties: Value) -> Value {
    let required: Vec<Value> = properties.as_object().expect("properties is an object").keys().map(|k| json!(k)).collect();
    json!({ "type": "object", "properties": properties, "required": required, "additionalProperties": false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskBundle;

    /// The schema's required keys are exactly the fields a serialised value has.
    fn keys_match(schema: &Value, value: &Value) {
        let mut required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        let mut fields: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        required.sort();
        fields.sort();
        assert_eq!(required, fields);
    }

    #[test]
    fn the_bundle_schema_matches_the_bundle_type() {
        let bundle = TaskBundle {
            name: "n".into(),
            title: "t".into(),
            description: "d".into(),
            dataset_description: "dd".into(),
            priority_metric: "accuracy".into(),
            direction: crate::model::Direction::Maximize,
            metrics: vec!["accuracy".into()],
            target_column: "target".into(),
            training_timeout: 60,
            files: [("prepare.py", ""), ("baseline.py", ""), ("evaluate.py", "")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let value = serde_json::to_value(&bundle).unwrap();
        let (_, schema) = task_bundle();
        keys_match(&schema, &value);
        keys_match(&schema["properties"]["files"], &value["files"]);
        assert_eq!(value["direction"], "maximize", "the enum spelling in the schema is serde's");
    }

    #[test]
    fn every_schema_is_a_closed_object() {
        for (name, schema) in [topic_idea(), dataset_proposals(), task_bundle()] {
            assert_eq!(schema["type"], "object", "{name}");
            assert_eq!(schema["additionalProperties"], false, "{name}");
        }
    }
}
