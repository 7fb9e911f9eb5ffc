//! The top level of a JSON object, found without parsing what is inside its
//! values: where `usage`, `error` and `choices` are in a completion, which is
//! otherwise passed to the client as the upstream sent it.
//!
//! A full parse walked every token of every choice to find two small fields
//! (7% of a request's instructions). This scan skips strings (long ones with `memchr`)
//! and nested values by their brackets, and still walks the body to its last
//! byte: a body cut short, with an unclosed string or bracket, a bracket that
//! does not match, or anything after the object is refused, as the parse
//! refused it. What it does not check is the grammar inside a value (a
//! number's digits, a missing comma in a nested array): such a body is passed
//! on as it came, as it would be by a proxy (docs/decisions.md).

/// The object's top-level members of interest, as raw JSON text.
#[derive(Debug, Default, PartialEq)]
pub struct Top<'a> {
    pub choices: Option<&'a [u8]>,
    pub usage: Option<&'a [u8]>,
    pub error: Option<&'a [u8]>,
}

/// Deeper nesting is refused (serde_json's own recursion limit).
const MAX_DEPTH: u32 = 128;

/// Scan `body`, a JSON object.
pub fn top_level(body: &[u8]) -> Result<Top<'_>, &'static str> {
    let mut s = Scan { b: body, i: 0 };
    let mut top = Top::default();
    s.expect(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.expect(b'"')?;
            let key = s.string()?;
            s.expect(b':')?;
            s.ws();
            let start = s.i;
            s.value()?;
            let value = &body[start..s.i];
            match key {
                b"choices" => top.choices = Some(value),
                b"usage" => top.usage = Some(value),
                b"error" => top.error = Some(value),
                _ => {}
            }
            s.ws();
            match s.next() {
                Some(b',') => s.ws(),
                Some(b'}') => break,
                _ => return Err("expected ',' or '}' after a member"),
            }
        }
    }
    s.ws();
    if s.i != body.len() {
        return Err("characters after the object");
    }
    Ok(top)
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), &'static str> {
        self.ws();
        match self.next() {
            Some(got) if got == c => Ok(()),
            None => Err("the body ends early"),
            Some(_) => Err("unexpected character"),
        }
    }

    /// A string's contents, its opening quote already read.
    #[inline]
    fn string(&mut self) -> Result<&'a [u8], &'static str> {
        let start = self.i;
        loop {
            let rest = self.b.get(self.i..).unwrap_or_default();
            // most strings (keys, roles, ids) are short: looked at byte by
            // byte; past the first 16 bytes, memchr's vector search
            let mut at = 0;
            while at < rest.len().min(16) && rest[at] != b'"' && rest[at] != b'\\' {
                at += 1;
            }
            if at == 16 {
                at += memchr::memchr2(b'"', b'\\', &rest[16..]).ok_or("an unclosed string")?;
            } else if at == rest.len() {
                return Err("an unclosed string");
            }
            self.i += at;
            if self.b[self.i] == b'\\' {
                self.i += 2;
                continue;
            }
            self.i += 1;
            return Ok(&self.b[start..self.i - 1]);
        }
    }

    fn value(&mut self) -> Result<(), &'static str> {
        match self.next() {
            Some(b'"') => self.string().map(drop),
            Some(open @ (b'{' | b'[')) => self.nested(open),
            Some(b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                Ok(())
            }
            None => Err("the body ends early"),
            Some(_) => Err("unexpected character"),
        }
    }

    /// An object or array, its opening bracket already read: to its matching
    /// closing one. Open brackets are kept as bits (1 for an object).
    fn nested(&mut self, open: u8) -> Result<(), &'static str> {
        let mut stack: u128 = u128::from(open == b'{');
        let mut depth = 1u32;
        loop {
            match self.next().ok_or("the body ends early")? {
                b'"' => {
                    self.string()?;
                }
                c @ (b'{' | b'[') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err("nested too deeply");
                    }
                    stack = (stack << 1) | u128::from(c == b'{');
                }
                c @ (b'}' | b']') => {
                    if (stack & 1 == 1) != (c == b'}') {
                        return Err("a bracket that does not match");
                    }
                    stack >>= 1;
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const COMPLETION: &str = r#"{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"a \"quoted\" {brace} [x] \\ end"},"finish_reason":"stop"}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 9}, "error": null }"#;

    #[test]
    fn finds_the_members() {
        let top = top_level(COMPLETION.as_bytes()).unwrap();
        assert_eq!(
            top.usage,
            Some(&br#"{"prompt_tokens": 14, "completion_tokens": 9}"#[..])
        );
        assert_eq!(top.error, Some(&b"null"[..]));
        let choices: Value = serde_json::from_slice(top.choices.unwrap()).unwrap();
        assert_eq!(choices[0]["finish_reason"], "stop");
        assert_eq!(top_level(b" {} ").unwrap(), Top::default());
    }

    #[test]
    fn refuses_what_is_not_one_object() {
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"a\":[1}",
            b"{\"a\":{\"b\":1]}",
            b"{\"a\":\"open}",
            b"{\"a\":1}x",
            b"{\"a\":1}{}",
            b"{\"a\":\"\\",
            b"{\"a\":}",
            b"<html>",
        ] {
            assert!(
                top_level(bad).is_err(),
                "accepted {}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(top_level(deep.as_bytes()).is_err());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            // floats that read back exactly (serde_json's default parse
            // may differ in the last digit of others)
            (-4000i32..4000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            ".*".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any object serde_json writes is read, its members found as serde
        /// finds them; any part of it cut short is refused.
        #[test]
        fn agrees_with_serde(members in prop::collection::btree_map(
            prop_oneof![Just("usage".to_string()), Just("choices".to_string()), ".{0,6}".prop_map(String::from)],
            json_value(), 0..6), pretty in any::<bool>(), cut in any::<prop::sample::Index>()) {
            let object: serde_json::Map<String, Value> = members.into_iter().collect();
            let text = if pretty {
                serde_json::to_vec_pretty(&object).unwrap()
            } else {
                serde_json::to_vec(&object).unwrap()
            };
            let top = top_level(&text).unwrap();
            let raw = |m: Option<&[u8]>| m.map(|v| serde_json::from_slice::<Value>(v).unwrap());
            prop_assert_eq!(raw(top.usage), object.get("usage").cloned());
            prop_assert_eq!(raw(top.choices), object.get("choices").cloned());
            let short = &text[..cut.index(text.len())];
            prop_assert!(top_level(short).is_err(), "accepted a cut body");
        }
    }

    #[test]
    fn a_cut_completion_is_refused_wherever_it_is_cut() {
        let body =
            json!({"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 1}})
                .to_string();
        for n in 0..body.len() {
            assert!(top_level(&body.as_bytes()[..n]).is_err(), "cut at {n}");
        }
    }
}
