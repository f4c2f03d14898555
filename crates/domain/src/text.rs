//! Text that came from outside (branch names, a branch's settings file, errors quoting either) made safe
//! to show: no control character reaches a terminal, a log line or a page raw, and no value floods one.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The most characters of an outside value an error, an event or a log line quotes.
pub const QUOTE_MAX: usize = 200;
/// The most characters one error message keeps (`last_error`, an event, a log line).
pub const MESSAGE_MAX: usize = 2_000;

/// Would `c` change what a terminal shows or how a line reads, beyond printing itself? C0 and C1 controls
/// and DEL (escape sequences, bells, carriage returns, new lines), and Unicode's invisible formatting
/// characters that reorder or forge text: bidirectional overrides and isolates, line and paragraph
/// separators.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// `s` with every [unsafe](is_unsafe) character written as a Rust escape (`\n`, `\u{1b}`): one line,
/// shown literally wherever it goes.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `s` cut to at most `max` characters, saying how much was left out.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((at, _)) => Cow::Owned(format!("{}… ({} more characters)", &s[..at], s[at..].chars().count())),
    }
}

/// An outside value as an error quotes it: [`printable`], then [`clip`]ped to [`QUOTE_MAX`].
pub fn quote(s: &str) -> String {
    clip(&printable(s), QUOTE_MAX).into_owned()
}

/// A message as previewd keeps and shows it (`last_error`, events, logs): [`printable`], then
/// [`clip`]ped to [`MESSAGE_MAX`].
pub fn message(s: &str) -> String {
    clip(&printable(s), MESSAGE_MAX).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(printable("plain/branch-é"), "plain/branch-é");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
        assert_eq!(printable("a\u{1b}]0;owned\u{7}b"), "a\\u{1b}]0;owned\\u{7}b");
        assert_eq!(printable("line\r\nforged"), "line\\r\\nforged");
        assert_eq!(printable("c1\u{9b}31m"), "c1\\u{9b}31m");
        assert_eq!(printable("rtl\u{202e}gnp.exe"), "rtl\\u{202e}gnp.exe");
        assert_eq!(printable("del\u{7f}"), "del\\u{7f}");
    }

    #[test]
    fn long_values_are_cut_saying_how_much() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdef", 3), "abc… (3 more characters)");
        let huge = "x".repeat(200_000);
        assert!(message(&huge).len() < MESSAGE_MAX + 40);
        assert!(quote(&format!("{}\u{1b}", "é".repeat(300))).chars().count() < QUOTE_MAX + 30);
    }
}
