//! The chat request body, parsed only as far as routing needs: the top-level
//! fields are kept in order as raw JSON and written back unchanged, except
//! `model` (the upstream name) and `stream_options` (usage for pricing).

use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

pub struct ChatBody {
    fields: Vec<(String, Box<RawValue>)>,
    model: Option<String>,
    stream: bool,
    /// The client asked for `stream_options.include_usage`.
    client_wants_usage: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BodyError {
    pub message: String,
    pub param: Option<&'static str>,
}

pub fn bad(message: impl Into<String>, param: Option<&'static str>) -> BodyError {
    BodyError {
        message: message.into(),
        param,
    }
}

struct Fields(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A request body's top-level fields, in order, as raw JSON: a JSON object
/// whose keys do not repeat (a repeated key would be read one way here and
/// another upstream).
pub fn parse_fields(bytes: &[u8]) -> Result<Vec<(String, Box<RawValue>)>, BodyError> {
    let Fields(fields) = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("the request body is not a JSON object: {e}"), None))?;
    if let Some(dup) = repeated_key(&fields) {
        return Err(bad(
            format!("the request body repeats the key {dup:?}; send each key once"),
            None,
        ));
    }
    Ok(fields)
}

/// A field's raw JSON text.
pub fn raw_field<'a>(fields: &'a [(String, Box<RawValue>)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.get())
}

/// `model`, when given: a string.
pub fn model_field(fields: &[(String, Box<RawValue>)]) -> Result<Option<String>, BodyError> {
    match raw_field(fields, "model") {
        None | Some("null") => Ok(None),
        Some(v) => serde_json::from_str::<String>(v)
            .map(Some)
            .map_err(|_| bad("'model' must be a string", Some("model"))),
    }
}

/// The fields as sent, `model` set to `upstream_model`.
pub fn render_with_model(fields: &[(String, Box<RawValue>)], upstream_model: &str) -> Bytes {
    let mut out = Vec::with_capacity(
        fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + upstream_model.len()
            + 16,
    );
    out.push(b'{');
    write_json_string(&mut out, "model");
    out.push(b':');
    write_json_string(&mut out, upstream_model);
    for (key, value) in fields.iter().filter(|(k, _)| k != "model") {
        out.push(b',');
        write_json_string(&mut out, key);
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Bytes::from(out)
}

impl ChatBody {
    pub fn parse(bytes: &[u8]) -> Result<ChatBody, BodyError> {
        Self::from_fields(parse_fields(bytes)?)
    }

    /// A body the gateway built itself by translating another API's request
    /// (its `messages` already checked): not read again.
    pub fn translated(
        fields: Vec<(String, Box<RawValue>)>,
        model: Option<String>,
        stream: bool,
    ) -> ChatBody {
        ChatBody {
            fields,
            model,
            stream,
            client_wants_usage: false,
        }
    }

    /// A body from its top-level fields (keys not repeated), checked as
    /// `parse` checks one.
    pub fn from_fields(fields: Vec<(String, Box<RawValue>)>) -> Result<ChatBody, BodyError> {
        let raw = |name: &str| raw_field(&fields, name);
        let model = model_field(&fields)?;
        let stream = match raw("stream") {
            None | Some("null") => false,
            Some(v) => serde_json::from_str::<bool>(v)
                .map_err(|_| bad("'stream' must be a boolean", Some("stream")))?,
        };
        match raw("messages") {
            None | Some("null") => {
                return Err(bad("'messages' is required", Some("messages")));
            }
            Some(v) => {
                let list = serde_json::from_str::<Vec<IgnoredAny>>(v)
                    .map_err(|_| bad("'messages' must be an array", Some("messages")))?;
                if list.is_empty() {
                    return Err(bad("'messages' must not be empty", Some("messages")));
                }
            }
        }
        #[derive(Deserialize)]
        struct StreamOptions {
            #[serde(default)]
            include_usage: Option<bool>,
        }
        let client_wants_usage = raw("stream_options")
            .and_then(|v| serde_json::from_str::<StreamOptions>(v).ok())
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        Ok(ChatBody {
            fields,
            model,
            stream,
            client_wants_usage,
        })
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn stream(&self) -> bool {
        self.stream
    }

    pub fn client_wants_usage(&self) -> bool {
        self.client_wants_usage
    }

    /// A top-level field as raw JSON text.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.get())
    }

    /// `n` is absent or at most 1: one answer per request.
    pub fn single_choice(&self) -> bool {
        self.raw("n")
            .is_none_or(|v| serde_json::from_str::<u64>(v).is_ok_and(|n| n <= 1))
    }

    /// The request a model is asked to continue a partial answer with: the
    /// messages gain `partial` as a final assistant message. `flags` adds
    /// what vLLM needs to continue it rather than start a new turn
    /// (`continue_final_message`, `add_generation_prompt: false`).
    pub fn continued(&self, partial: &str, flags: bool) -> Option<ChatBody> {
        let mut messages: Vec<Box<RawValue>> = serde_json::from_str(self.raw("messages")?).ok()?;
        let last = serde_json::json!({"role": "assistant", "content": partial});
        messages.push(serde_json::value::to_raw_value(&last).ok()?);
        let messages = serde_json::value::to_raw_value(&messages).ok()?;
        let mut fields: Vec<(String, Box<RawValue>)> = self
            .fields
            .iter()
            .filter(|(k, _)| k != "continue_final_message" && k != "add_generation_prompt")
            .map(|(k, v)| match k.as_str() {
                "messages" => (k.clone(), messages.clone()),
                _ => (k.clone(), v.clone()),
            })
            .collect();
        if flags {
            let yes = serde_json::value::to_raw_value(&true).ok()?;
            let no = serde_json::value::to_raw_value(&false).ok()?;
            fields.push(("continue_final_message".into(), yes));
            fields.push(("add_generation_prompt".into(), no));
        }
        Some(ChatBody {
            fields,
            model: self.model.clone(),
            stream: self.stream,
            client_wants_usage: self.client_wants_usage,
        })
    }

    /// The body for an OpenAI-compatible upstream: every field as sent, `model`
    /// set to `upstream_model`, and on a stream `stream_options.include_usage`
    /// added when `ask_usage`.
    pub fn render(&self, upstream_model: &str, ask_usage: bool) -> Bytes {
        let ask_usage = ask_usage && self.stream;
        let mut out = Vec::with_capacity(
            self.fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + upstream_model.len()
                + 64,
        );
        out.push(b'{');
        let mut first = true;
        let mut put_key = |out: &mut Vec<u8>, key: &str| {
            if !first {
                out.push(b',');
            }
            first = false;
            write_json_string(out, key);
            out.push(b':');
        };
        let mut saw_model = false;
        let mut saw_options = false;
        for (key, value) in &self.fields {
            match key.as_str() {
                "model" => {
                    if saw_model {
                        continue;
                    }
                    saw_model = true;
                    put_key(&mut out, key);
                    write_json_string(&mut out, upstream_model);
                }
                "stream_options" if ask_usage => {
                    saw_options = true;
                    put_key(&mut out, key);
                    let mut opts: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(value.get()).unwrap_or_default();
                    opts.insert("include_usage".into(), serde_json::Value::Bool(true));
                    out.extend_from_slice(serde_json::Value::Object(opts).to_string().as_bytes());
                }
                _ => {
                    put_key(&mut out, key);
                    out.extend_from_slice(value.get().as_bytes());
                }
            }
        }
        if !saw_model {
            put_key(&mut out, "model");
            write_json_string(&mut out, upstream_model);
        }
        if ask_usage && !saw_options {
            put_key(&mut out, "stream_options");
            out.extend_from_slice(br#"{"include_usage":true}"#);
        }
        out.push(b'}');
        Bytes::from(out)
    }

    /// The whole body as a JSON value (for providers that translate it).
    pub fn to_value(&self) -> serde_json::Map<String, serde_json::Value> {
        self.fields
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::from_str(v.get()).ok()?)))
            .collect()
    }
}

/// The first top-level key that appears twice.
fn repeated_key(fields: &[(String, Box<RawValue>)]) -> Option<&str> {
    if fields.len() <= 16 {
        // the common case: a few keys, compared pairwise without allocating
        return fields
            .iter()
            .enumerate()
            .find(|(i, (k, _))| fields[..*i].iter().any(|(seen, _)| seen == k))
            .map(|(_, (k, _))| k.as_str());
    }
    let mut seen = std::collections::HashSet::with_capacity(fields.len());
    fields
        .iter()
        .find(|(k, _)| !seen.insert(k.as_str()))
        .map(|(k, _)| k.as_str())
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping of a &str cannot fail
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_fields_and_rewrites_model() {
        let body = br#"{"model":"plan","messages":[{"role":"user","content":"hi"}],"temperature":0.2,"tools":[{"type":"function"}]}"#;
        let b = ChatBody::parse(body).unwrap();
        assert_eq!(b.model(), Some("plan"));
        assert!(!b.stream());
        let out = b.render("moonshotai/kimi-k2", true);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"moonshotai/kimi-k2","messages":[{"role":"user","content":"hi"}],"temperature":0.2,"tools":[{"type":"function"}]}"#
        );
    }

    #[test]
    fn asks_for_stream_usage_without_losing_client_options() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false,"x":1}}"#;
        let b = ChatBody::parse(body).unwrap();
        assert!(b.stream());
        assert!(!b.client_wants_usage());
        let out: serde_json::Value = serde_json::from_slice(&b.render("m", true)).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["stream_options"]["x"], 1);
        assert_eq!(out["model"], "m");
        let plain: serde_json::Value = serde_json::from_slice(&b.render("m", false)).unwrap();
        assert_eq!(plain["stream_options"]["include_usage"], false);
    }

    #[test]
    fn rejects_what_the_spec_rejects() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"not json", None),
            (b"[1,2]", None),
            (br#"{"model":"x"}"#, Some("messages")),
            (br#"{"model":"x","messages":[]}"#, Some("messages")),
            (br#"{"model":"x","messages":"hi"}"#, Some("messages")),
            (
                br#"{"model":"x","messages":[{}],"stream":"yes"}"#,
                Some("stream"),
            ),
            (br#"{"model":7,"messages":[{}]}"#, Some("model")),
            (
                br#"{"model":"x","messages":[{}],"stream":false,"stream":true}"#,
                None,
            ),
        ];
        for (body, param) in cases {
            let err = ChatBody::parse(body).err().unwrap();
            assert_eq!(err.param, *param, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_repeated_key_is_named() {
        let body = br#"{"model":"x","stream":false,"messages":[{}],"stream":true}"#;
        let err = ChatBody::parse(body).err().unwrap();
        assert!(err.message.contains("\"stream\""), "{}", err.message);
        let many: String = (0..40).map(|i| format!("\"k{i}\":1,")).collect();
        let body = format!("{{{many}\"messages\":[{{}}],\"k7\":2}}");
        let err = ChatBody::parse(body.as_bytes()).err().unwrap();
        assert!(err.message.contains("\"k7\""), "{}", err.message);
        // nested objects may repeat keys between them
        let ok = br#"{"messages":[{"role":"user"},{"role":"assistant"}]}"#;
        assert!(ChatBody::parse(ok).is_ok());
    }

    mod props {
        use proptest::prelude::*;
        use serde_json::{json, Map, Value};

        use super::*;
        use crate::testing::{json, object};

        const KEYS: &[&str] = &[
            "model",
            "messages",
            "stream",
            "stream_options",
            "include_usage",
            "tools",
            "role",
            "content",
        ];

        /// A request a client could send: the fields as generated, a string
        /// model, a non-empty message list, a boolean stream.
        fn request() -> impl Strategy<Value = Map<String, Value>> {
            (
                object(KEYS),
                ".{0,16}",
                prop::collection::vec(json(KEYS), 1..4),
                any::<bool>(),
            )
                .prop_map(|(mut m, model, messages, stream)| {
                    m.insert("model".into(), json!(model));
                    m.insert("messages".into(), Value::Array(messages));
                    m.insert("stream".into(), json!(stream));
                    m.remove("stream_options");
                    m
                })
        }

        proptest! {
            #[test]
            fn any_bytes_are_parsed_or_refused_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
                let _ = ChatBody::parse(&bytes);
            }

            #[test]
            fn any_json_object_is_parsed_or_refused_with_a_message(v in object(KEYS)) {
                let text = Value::Object(v).to_string();
                if let Err(e) = ChatBody::parse(text.as_bytes()) {
                    prop_assert!(!e.message.is_empty());
                }
            }

            #[test]
            fn a_valid_request_round_trips(req in request(), upstream in "[a-z0-9/._-]{1,24}") {
                let text = Value::Object(req.clone()).to_string();
                let body = ChatBody::parse(text.as_bytes()).unwrap();
                prop_assert_eq!(body.model(), req["model"].as_str());
                prop_assert_eq!(body.stream(), req["stream"] == json!(true));
                prop_assert_eq!(&body.to_value(), &req);
                // rendered for an upstream: the same fields, the upstream's model
                let out: Map<String, Value> = serde_json::from_slice(&body.render(&upstream, false)).unwrap();
                let mut want = req.clone();
                want.insert("model".into(), json!(upstream));
                prop_assert_eq!(out, want);
            }

            #[test]
            fn a_repeated_key_is_refused_naming_it(req in request(), which in 0usize..3) {
                let key = ["model", "messages", "stream"][which];
                let text = Value::Object(req.clone()).to_string();
                let dup = format!("{{{}:{},{}", Value::from(key), req[key], &text[1..]);
                let e = ChatBody::parse(dup.as_bytes()).err().unwrap();
                prop_assert!(e.message.contains(&format!("{key:?}")), "{}", e.message);
            }
        }
    }
}
