//! Request translation, table-driven: OpenAI bodies in, Messages API bodies
//! (shaped as in Anthropic's API reference) out.

use serde_json::{json, Map, Value};

use super::*;

fn run(req: Value, max_output: Option<u64>) -> Translated {
    let map: Map<String, Value> = req.as_object().cloned().unwrap();
    translate(&map, "claude-sonnet-4-5", max_output)
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

/// Each case: the fields of the request besides `model`, the model's
/// max_output_tokens, and the fields expected in the translation (`null`:
/// the field must be absent).
#[test]
fn translates_each_field() {
    let hi = [user("hi")];
    let cases: Vec<(&str, Value, Option<u64>, Value)> = vec![
        (
            "a plain user message; max_tokens from the documented default",
            json!({"messages": hi}),
            None,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": DEFAULT_MAX_TOKENS,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "system": null, "stream": null, "temperature": null, "tools": null,
            }),
        ),
        (
            "max_tokens from the model's max_output_tokens",
            json!({"messages": hi}),
            Some(8192),
            json!({"max_tokens": 8192}),
        ),
        (
            "the client's max_tokens wins",
            json!({"messages": hi, "max_tokens": 100}),
            Some(8192),
            json!({"max_tokens": 100}),
        ),
        (
            "max_completion_tokens wins over max_tokens",
            json!({"messages": hi, "max_tokens": 100, "max_completion_tokens": 50}),
            None,
            json!({"max_tokens": 50}),
        ),
        (
            "system and developer messages, wherever they are, go to system in order",
            json!({"messages": [
                {"role": "system", "content": "Be terse."},
                user("hi"),
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            ]}),
            None,
            json!({
                "system": [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Use French."}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            }),
        ),
        (
            "consecutive same-role turns are merged; empty ones dropped",
            json!({"messages": [
                user("one"), user(""), user("two"),
                {"role": "assistant", "content": "a"},
                {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
                user("three"),
            ]}),
            None,
            json!({"messages": [
                {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "user", "content": [{"type": "text", "text": "three"}]},
            ]}),
        ),
        (
            "image URLs and base64 data URLs; detail dropped; cache_control kept",
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
            ]}]}),
            None,
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            ]}]}),
        ),
        (
            "temperature (clamped to Anthropic's 0-1), top_p",
            json!({"messages": hi, "temperature": 1.5, "top_p": 0.9}),
            None,
            json!({"temperature": 1.0, "top_p": 0.9}),
        ),
        (
            "temperature within range is kept",
            json!({"messages": hi, "temperature": 0.2}),
            None,
            json!({"temperature": 0.2}),
        ),
        (
            "stop as a string",
            json!({"messages": hi, "stop": "END"}),
            None,
            json!({"stop_sequences": ["END"], "stop": null}),
        ),
        (
            "stop as an array",
            json!({"messages": hi, "stop": ["a", "", "b"]}),
            None,
            json!({"stop_sequences": ["a", "b"]}),
        ),
        (
            "stream, user -> metadata.user_id, Anthropic's own top_k and thinking passed",
            json!({"messages": hi, "stream": true, "stream_options": {"include_usage": true},
                   "user": "u-42", "top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}}),
            None,
            json!({"stream": true, "stream_options": null, "metadata": {"user_id": "u-42"},
                   "top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}}),
        ),
        (
            "parameters with no Anthropic meaning are dropped",
            json!({"messages": hi, "frequency_penalty": 0.5, "presence_penalty": 0.5, "logit_bias": {"1": 2},
                   "logprobs": true, "top_logprobs": 2, "n": 2, "seed": 7, "store": true,
                   "metadata": {"k": "v"}, "service_tier": "auto", "reasoning_effort": "low",
                   "modalities": ["text"], "audio": {}, "prediction": {}, "web_search_options": {},
                   "functions": [], "function_call": "auto", "verbosity": "low", "custom": 1}),
            None,
            json!({"frequency_penalty": null, "presence_penalty": null, "logit_bias": null,
                   "logprobs": null, "top_logprobs": null, "n": null, "seed": null, "store": null,
                   "metadata": null, "service_tier": null, "reasoning_effort": null, "modalities": null,
                   "audio": null, "prediction": null, "web_search_options": null, "functions": null,
                   "function_call": null, "verbosity": null, "custom": null}),
        ),
    ];
    for (name, req, max_output, want) in cases {
        let out = run(req, max_output).body;
        for (key, expected) in want.as_object().unwrap() {
            if expected.is_null() {
                assert!(
                    out.get(key).is_none(),
                    "{name}: {key} should be absent: {out}"
                );
            } else {
                assert_eq!(&out[key], expected, "{name}: {key}\n{out}");
            }
        }
    }
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
        "strict": true,
    }})
}

#[test]
fn tools_and_each_tool_choice() {
    let anthropic_tool = json!({
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    });
    let cases: Vec<(&str, Value, Option<bool>, Value)> = vec![
        ("no tool_choice", Value::Null, None, Value::Null),
        ("auto", json!("auto"), None, json!({"type": "auto"})),
        ("none", json!("none"), None, json!({"type": "none"})),
        ("required", json!("required"), None, json!({"type": "any"})),
        (
            "a named function",
            json!({"type": "function", "function": {"name": "get_weather"}}),
            None,
            json!({"type": "tool", "name": "get_weather"}),
        ),
        (
            "parallel_tool_calls false, no choice",
            Value::Null,
            Some(false),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (
            "parallel_tool_calls false with required",
            json!("required"),
            Some(false),
            json!({"type": "any", "disable_parallel_tool_use": true}),
        ),
        (
            "parallel_tool_calls true changes nothing",
            json!("auto"),
            Some(true),
            json!({"type": "auto"}),
        ),
    ];
    for (name, choice, parallel, want) in cases {
        let mut req = json!({"messages": [user("weather?")], "tools": [
            weather_tool(),
            {"type": "custom", "custom": {"name": "grammar"}},
            {"type": "function", "function": {"name": "no_params"}},
        ]});
        if !choice.is_null() {
            req["tool_choice"] = choice;
        }
        if let Some(p) = parallel {
            req["parallel_tool_calls"] = json!(p);
        }
        let out = run(req, None).body;
        assert_eq!(
            out["tools"],
            json!([anthropic_tool, {"name": "no_params", "input_schema": {"type": "object", "properties": {}}}]),
            "{name}"
        );
        match want {
            Value::Null => assert!(out.get("tool_choice").is_none(), "{name}"),
            w => assert_eq!(out["tool_choice"], w, "{name}"),
        }
        assert!(out.get("parallel_tool_calls").is_none(), "{name}");
    }
    // tool_choice without tools is left out
    let out = run(
        json!({"messages": [user("x")], "tool_choice": "required"}),
        None,
    )
    .body;
    assert!(out.get("tool_choice").is_none() && out.get("tools").is_none());
}

#[test]
fn tool_calls_and_tool_results_become_blocks() {
    let req = json!({"messages": [
        user("Weather in Paris and Rome?"),
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "not json"}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "15 degrees"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "18 degrees"}]},
        user("Thanks"),
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "toolu_3", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        ]},
    ]});
    let out = run(req, None).body;
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "15 degrees"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "18 degrees"}]},
                {"type": "text", "text": "Thanks"},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {}},
            ]},
        ])
    );
}

#[test]
fn tool_results_go_first_in_a_merged_user_turn() {
    let req = json!({"messages": [
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        user("also this"),
        {"role": "tool", "tool_call_id": "t1", "content": "done"},
    ]});
    let out = run(req, None).body;
    assert_eq!(
        out["messages"][1]["content"],
        json!([
            {"type": "tool_result", "tool_use_id": "t1", "content": "done"},
            {"type": "text", "text": "also this"},
        ])
    );
}

#[test]
fn response_formats() {
    let schema = json!({"type": "object", "properties": {"steps": {"type": "array"}}, "required": ["steps"]});
    let json_schema = |name: &str| json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": true}});

    // text: nothing changes
    let t = run(
        json!({"messages": [user("x")], "response_format": {"type": "text"}}),
        None,
    );
    assert!(t.body.get("system").is_none() && t.json_tool.is_none());

    // json_object: an instruction appended to system
    let t = run(
        json!({"messages": [{"role": "system", "content": "Plan."}, user("x")], "response_format": {"type": "json_object"}}),
        None,
    );
    assert_eq!(
        t.body["system"],
        json!([{"type": "text", "text": "Plan."}, {"type": "text", "text": JSON_INSTRUCTION}])
    );
    assert!(t.json_tool.is_none() && t.body.get("response_format").is_none());

    // json_schema without tools: a forced tool whose input is the answer
    let t = run(
        json!({"messages": [user("x")], "response_format": json_schema("plan")}),
        None,
    );
    assert_eq!(t.json_tool.as_deref(), Some("plan"));
    assert_eq!(t.body["tools"][0]["name"], "plan");
    assert_eq!(t.body["tools"][0]["input_schema"], schema);
    assert_eq!(
        t.body["tool_choice"],
        json!({"type": "tool", "name": "plan"})
    );
    assert!(t.body.get("system").is_none());

    // a name Anthropic would refuse: the default tool name
    let t = run(
        json!({"messages": [user("x")], "response_format": json_schema("my plan!")}),
        None,
    );
    assert_eq!(t.json_tool.as_deref(), Some(JSON_TOOL));

    // json_schema with the client's own tools: the schema in an instruction
    let t = run(
        json!({"messages": [user("x")], "tools": [weather_tool()], "response_format": json_schema("plan")}),
        None,
    );
    assert!(t.json_tool.is_none());
    assert_eq!(t.body["tools"].as_array().unwrap().len(), 1);
    let instruction = t.body["system"][0]["text"].as_str().unwrap();
    assert!(instruction.starts_with(JSON_INSTRUCTION), "{instruction}");
    assert!(
        instruction.contains(r#""required":["steps"]"#),
        "{instruction}"
    );

    // with extended thinking a tool cannot be forced: instruction too
    let t = run(
        json!({"messages": [user("x")], "thinking": {"type": "enabled", "budget_tokens": 2000},
               "response_format": json_schema("plan")}),
        None,
    );
    assert!(t.json_tool.is_none() && t.body.get("tools").is_none());
}

#[test]
fn unknown_roles_and_non_string_content_are_left_out() {
    let req = json!({"messages": [
        {"role": "function", "name": "f", "content": "x"},
        {"role": "user", "content": null},
        user("real"),
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "mystery"}]},
    ]});
    let out = run(req, None).body;
    assert_eq!(
        out["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "real"}]}])
    );
}
