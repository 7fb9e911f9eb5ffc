//! Whether an answer is worth serving, for tiers with `validate_output`: not
//! empty (some content, a tool call or a refusal), and what the request's
//! `response_format` asked for (a JSON object; one that matches its schema).

use serde_json::Value;

/// What a request's `response_format` asks of the content.
pub enum Format {
    Text,
    JsonObject,
    /// The schema of a `json_schema` format, compiled once per request.
    JsonSchema(Box<jsonschema::Validator>),
}

impl Format {
    /// From the request's raw `response_format`; a schema that does not
    /// compile is not checked (the upstream judged the request, not us).
    pub fn of(response_format: Option<&str>) -> Format {
        let Some(v) = response_format.and_then(|r| serde_json::from_str::<Value>(r).ok()) else {
            return Format::Text;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("json_object") => Format::JsonObject,
            Some("json_schema") => v
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .and_then(|schema| jsonschema::validator_for(schema).ok())
                .map_or(Format::JsonObject, |v| Format::JsonSchema(Box::new(v))),
            _ => Format::Text,
        }
    }
}

/// A chat completion body: `Err` says why it is not worth serving.
pub fn completion(body: &[u8], format: &Format) -> Result<(), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let message = &v["choices"][0]["message"];
    let content = message["content"].as_str().unwrap_or("");
    let tool_calls = message["tool_calls"]
        .as_array()
        .is_some_and(|c| !c.is_empty());
    let refusal = message["refusal"]
        .as_str()
        .is_some_and(|r| !r.trim().is_empty());
    if content.trim().is_empty() && !tool_calls && !refusal {
        return Err("an empty answer: no content, tool call or refusal".into());
    }
    if tool_calls || refusal {
        return Ok(());
    }
    match format {
        Format::Text => Ok(()),
        Format::JsonObject => match serde_json::from_str::<Value>(content) {
            Ok(Value::Object(_)) => Ok(()),
            _ => Err("the content is not a JSON object (response_format json_object)".into()),
        },
        Format::JsonSchema(schema) => {
            let parsed: Value = serde_json::from_str(content)
                .map_err(|_| "the content is not JSON (response_format json_schema)".to_string())?;
            let first = schema.iter_errors(&parsed).next().map(|e| {
                format!(
                    "the content does not match the response_format schema: {e} at {}",
                    e.instance_path
                )
            });
            first.map_or(Ok(()), Err)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(message: Value) -> Vec<u8> {
        json!({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn empty_answers_and_formats() {
        let text = Format::Text;
        assert!(completion(&answer(json!({"content": "hi"})), &text).is_ok());
        assert!(completion(&answer(json!({"content": "  \n"})), &text).is_err());
        assert!(completion(&answer(json!({"content": null})), &text).is_err());
        let call = json!({"content": null, "tool_calls": [{"id": "c", "type": "function"}]});
        assert!(completion(&answer(call), &text).is_ok());
        assert!(completion(&answer(json!({"content": null, "refusal": "no"})), &text).is_ok());

        let object = Format::of(Some(r#"{"type":"json_object"}"#));
        assert!(completion(&answer(json!({"content": "{\"a\": 1}"})), &object).is_ok());
        assert!(completion(&answer(json!({"content": "[1]"})), &object).is_err());
        assert!(completion(&answer(json!({"content": "sure! {"})), &object).is_err());

        let schema = Format::of(Some(
            r#"{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","required":["city"],"properties":{"city":{"type":"string"}}}}}"#,
        ));
        assert!(completion(
            &answer(json!({"content": "{\"city\": \"Paris\"}"})),
            &schema
        )
        .is_ok());
        let wrong = completion(
            &answer(json!({"content": "{\"town\": \"Paris\"}"})),
            &schema,
        );
        assert!(wrong.unwrap_err().contains("schema"));
    }
}
