//! Chat Completions chunks as Responses stream events, each with its
//! `sequence_number`: response.created and response.in_progress (sent with
//! the first content, so withheld until commit), then per output item
//! output_item.added, its content (output_text deltas; function-call
//! argument deltas; a custom tool call's input), its done events, and at
//! the end response.completed (response.incomplete when cut by the token
//! limit) or, after a failure, response.failed.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::api::chunk_probe::{ChunkProbe, ToolDelta};

use super::answer::{call_item, message_item, new_id, now, response};
use super::Echo;
use crate::cost::Usage;

struct Text {
    id: String,
    index: usize,
    text: String,
}

struct Call {
    id: String,
    index: usize,
    call_id: String,
    name: String,
    arguments: String,
    custom: bool,
    done: bool,
}

pub struct Encoder {
    echo: Echo,
    id: String,
    created_at: u64,
    model: String,
    seq: u64,
    started: bool,
    /// Finished output items, by output index.
    output: BTreeMap<usize, Value>,
    next_index: usize,
    text: Option<Text>,
    /// By the chat tool-call index.
    calls: BTreeMap<u64, Call>,
    incomplete: bool,
    out: String,
}

impl Encoder {
    pub fn new(echo: Echo) -> Self {
        Encoder {
            echo,
            id: new_id("resp"),
            created_at: now(),
            model: String::new(),
            seq: 0,
            started: false,
            output: BTreeMap::new(),
            next_index: 0,
            text: None,
            calls: BTreeMap::new(),
            incomplete: false,
            out: String::new(),
        }
    }

    fn emit(&mut self, kind: &str, mut data: Value) {
        data["type"] = kind.into();
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        self.out
            .push_str(&format!("event: {kind}\ndata: {data}\n\n"));
    }

    fn snapshot(&self, status: &str, usage: Option<&Usage>) -> Value {
        let output = self.output.values().cloned().collect();
        response(
            &self.echo,
            (&self.id, self.created_at, &self.model),
            status,
            output,
            usage,
        )
    }

    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.snapshot("in_progress", None);
        self.emit("response.created", json!({"response": r}));
        self.emit("response.in_progress", json!({"response": r}));
    }

    fn close_text(&mut self) {
        let Some(t) = self.text.take() else { return };
        let item = message_item(&t.id, &t.text, "completed").value();
        let at = json!({"item_id": t.id, "output_index": t.index, "content_index": 0});
        let mut done = at.clone();
        done["text"] = t.text.clone().into();
        done["logprobs"] = json!([]);
        self.emit("response.output_text.done", done);
        let mut part = at;
        part["part"] = item["content"][0].clone();
        self.emit("response.content_part.done", part);
        self.emit(
            "response.output_item.done",
            json!({"output_index": t.index, "item": item}),
        );
        self.output.insert(t.index, item);
    }

    fn close_calls(&mut self) {
        let open: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| !c.done)
            .map(|(&k, _)| k)
            .collect();
        for k in open {
            let Some(c) = self.calls.get_mut(&k) else {
                continue;
            };
            c.done = true;
            let (id, index, call_id, name, arguments, custom) = (
                c.id.clone(),
                c.index,
                c.call_id.clone(),
                c.name.clone(),
                c.arguments.clone(),
                c.custom,
            );
            let mut item = call_item(&self.echo, &call_id, &name, &arguments, "completed").value();
            item["id"] = id.clone().into();
            if custom {
                let input = item["input"].clone();
                self.emit(
                    "response.custom_tool_call_input.delta",
                    json!({"item_id": id, "output_index": index, "delta": input}),
                );
                self.emit(
                    "response.custom_tool_call_input.done",
                    json!({"item_id": id, "output_index": index, "input": input}),
                );
            } else {
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments}),
                );
            }
            self.emit(
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            );
            self.output.insert(index, item);
        }
    }

    fn text_delta(&mut self, delta: String) {
        self.start();
        if self.text.is_none() {
            self.close_calls();
            let t = Text {
                id: new_id("msg"),
                index: self.next_index,
                text: String::new(),
            };
            self.next_index += 1;
            let mut item = message_item(&t.id, "", "in_progress").value();
            item["content"] = json!([]);
            self.emit(
                "response.output_item.added",
                json!({"output_index": t.index, "item": item}),
            );
            self.emit(
                "response.content_part.added",
                json!({"item_id": t.id, "output_index": t.index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            );
            self.text = Some(t);
        }
        let Some(t) = self.text.as_mut() else { return };
        t.text.push_str(&delta);
        let (id, index) = (t.id.clone(), t.index);
        self.emit(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
        );
    }

    fn call_delta(&mut self, d: ToolDelta) {
        self.start();
        let f = d.function.unwrap_or_default();
        if !self.calls.contains_key(&d.index) {
            self.close_text();
            self.close_calls();
            let name = f.name.clone().unwrap_or_default();
            let custom = self.echo.custom_tools.contains(&name);
            let call_id = d.id.clone().unwrap_or_else(|| new_id("call"));
            let id = new_id(if custom { "ctc" } else { "fc" });
            let index = self.next_index;
            self.next_index += 1;
            let mut item = call_item(&self.echo, &call_id, &name, "", "in_progress").value();
            item["id"] = id.clone().into();
            self.emit(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            self.calls.insert(
                d.index,
                Call {
                    id,
                    index,
                    call_id,
                    name,
                    arguments: String::new(),
                    custom,
                    done: false,
                },
            );
        }
        let Some(args) = f.arguments.filter(|a| !a.is_empty()) else {
            return;
        };
        let Some(c) = self.calls.get_mut(&d.index) else {
            return;
        };
        c.arguments.push_str(&args);
        if !c.custom {
            let (id, index) = (c.id.clone(), c.index);
            self.emit(
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": index, "delta": args}),
            );
        }
    }

    /// One chat chunk's payload -> the events to send (maybe none).
    pub fn chunk(&mut self, data: &[u8]) -> String {
        let Ok(probe) = serde_json::from_slice::<ChunkProbe>(data) else {
            return String::new();
        };
        if self.model.is_empty() {
            self.model = probe.model.unwrap_or_default();
        }
        for choice in probe.choices {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    self.text_delta(text);
                }
                for call in delta.tool_calls.into_iter().flatten() {
                    self.call_delta(call);
                }
            }
            if choice.finish_reason.as_deref() == Some("length") {
                self.incomplete = true;
            }
        }
        std::mem::take(&mut self.out)
    }

    /// The end of a complete stream: every item done, then
    /// response.completed (or response.incomplete) with the whole response.
    pub fn finish(&mut self, usage: &Usage) -> String {
        self.start();
        self.close_text();
        self.close_calls();
        let status = if self.incomplete {
            "incomplete"
        } else {
            "completed"
        };
        let r = self.snapshot(status, Some(usage));
        self.emit(&format!("response.{status}"), json!({"response": r}));
        std::mem::take(&mut self.out)
    }

    /// The end of a stream broken after commit: response.failed.
    pub fn failed(&mut self, message: &str) -> String {
        self.start();
        let mut r = self.snapshot("failed", None);
        r["error"] = json!({"code": "stream_interrupted", "message": message});
        self.emit("response.failed", json!({"response": r}));
        std::mem::take(&mut self.out)
    }
}
