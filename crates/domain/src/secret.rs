//! A secret string (webhook secret, API token) that never shows itself in `Debug` or `Display` output,
//! so it cannot leak through a log line, an error chain or a `{:?}` of a configuration.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself, for the one place that needs it (an HMAC key, an Authorization header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn never_shows_itself() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?} {s} {:?}", vec![s.clone()]).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
