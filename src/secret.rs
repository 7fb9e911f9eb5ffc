//! Secrets as a type: whatever holds one cannot print it by accident.

use std::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// A credential. `Debug` and `Display` redact; the only way to the value is
/// [`Secret::expose`], used where it goes on the wire.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented credential.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// Equal values (used to tell whether a reloaded provider changed; not for
/// checking presented credentials, which is `matches`).
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("sk-very-secret");
        assert!(!format!("{s:?} {s}").contains("sk-very"));
        assert!(s.matches(b"sk-very-secret"));
        assert!(!s.matches(b"sk-very-secreT"));
        assert!(!s.matches(b"sk"));
    }
}

/// What stands in for a credential in anything the gateway passes on.
pub const REDACTED: &str = "[redacted]";

/// Removes every credential the gateway holds (provider keys, gateway keys,
/// the admin key) from text that came from an upstream, before that text is
/// cut short, so that no part of a key reaches a client, a log line or a span.
#[derive(Clone, Debug, Default)]
pub struct Scrubber {
    /// Longest first, so a key that contains another is replaced whole.
    needles: Vec<Secret>,
}

/// A trailing fragment this long or longer that starts a credential is cut;
/// shorter ones ("sk") say nothing about the key.
const MIN_FRAGMENT: usize = 3;

impl Scrubber {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut needles: Vec<Secret> = secrets
            .into_iter()
            .filter(|s| !s.expose().is_empty())
            .cloned()
            .collect();
        needles.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        needles.dedup();
        Scrubber { needles }
    }

    /// Whether `text` holds any credential.
    pub fn finds(&self, text: &str) -> bool {
        self.needles.iter().any(|n| text.contains(n.expose()))
    }

    /// `text` with every credential replaced.
    pub fn clean(&self, text: String) -> String {
        if !self.finds(&text) {
            return text;
        }
        let mut out = text;
        for n in &self.needles {
            if out.contains(n.expose()) {
                out = out.replace(n.expose(), REDACTED);
            }
        }
        out
    }

    /// Bytes (an upstream's body) with every credential replaced.
    pub fn clean_bytes(&self, body: bytes::Bytes) -> bytes::Bytes {
        let found = self.needles.iter().any(|n| {
            let n = n.expose().as_bytes();
            body.windows(n.len()).any(|w| w == n)
        });
        if !found {
            return body;
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        bytes::Bytes::from(self.clean(text))
    }

    /// Clean, then cut to at most `max` bytes (on a character boundary, with
    /// an ellipsis), then cut a trailing fragment that starts a credential.
    pub fn clean_cut(&self, text: String, max: usize) -> String {
        let mut s = self.clean(text);
        if s.len() <= max {
            return s;
        }
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        let fragment = self
            .needles
            .iter()
            .filter_map(|n| {
                let n = n.expose();
                (MIN_FRAGMENT..n.len())
                    .rev()
                    .find(|&k| n.is_char_boundary(k) && s.ends_with(&n[..k]))
            })
            .max();
        if let Some(k) = fragment {
            s.truncate(s.len() - k);
        }
        s.push('…');
        s
    }
}

#[cfg(test)]
mod scrub_tests {
    use super::*;

    fn scrubber() -> Scrubber {
        let keys = [
            Secret::new("sk-canary-0123456789"),
            Secret::new("gw-key-abc"),
        ];
        Scrubber::new(keys.iter())
    }

    #[test]
    fn replaces_every_credential_in_every_form() {
        let s = scrubber();
        let text =
            "got Authorization: Bearer sk-canary-0123456789 and x-api-key gw-key-abc".to_string();
        let out = s.clean(text);
        assert!(
            !out.contains("sk-canary") && !out.contains("gw-key"),
            "{out}"
        );
        assert!(out.contains("Bearer [redacted]"), "{out}");
        let body = bytes::Bytes::from_static(b"{\"auth\":\"Bearer sk-canary-0123456789\"}");
        assert_eq!(
            &s.clean_bytes(body)[..],
            b"{\"auth\":\"Bearer [redacted]\"}"
        );
    }

    #[test]
    fn scrubs_before_the_cut_and_cuts_a_fragment_at_the_cut() {
        let s = scrubber();
        // the key straddles the cut: scrubbed whole first
        let text = format!("{}Bearer sk-canary-0123456789 tail", "x".repeat(290));
        let out = s.clean_cut(text, 300);
        assert!(!out.contains("sk-can"), "{out}");
        // a text that is cut inside something that starts like the key
        let text = format!("{}sk-canary-01", "y".repeat(295));
        let out = s.clean_cut(format!("{text}ZZZZZZ"), 300);
        assert!(!out.contains("sk-ca"), "{out}");
        assert!(out.starts_with("yyyy") && out.ends_with('…'));
        // short texts are left alone
        assert_eq!(s.clean_cut("fine".into(), 300), "fine");
    }
}
