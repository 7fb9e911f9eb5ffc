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
