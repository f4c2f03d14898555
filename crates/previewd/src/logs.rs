//! Log lines as they leave the process: one event, one line, nothing a terminal obeys. Branch names and
//! errors quoting a branch's file reach the logs; tracing-subscriber escapes ANSI and C1 controls in
//! text fields, but not line breaks or Unicode's bidirectional overrides (which reorder what a person
//! reads), and a JSON line keeps C1 and bidirectional characters raw inside its strings. This writer
//! escapes every [unsafe](previewd_domain::text::is_unsafe) character but the line's own end: as
//! `\u{…}` in text, as a JSON escape (`\u202e`) in JSON, which keeps the line valid JSON.

use std::io::{self, Write};

use previewd_domain::text::is_unsafe;
use tracing_subscriber::fmt::MakeWriter;

/// Wraps a [`MakeWriter`] so each line it is given is written safe.
#[derive(Debug, Clone)]
pub struct SafeLines<M> {
    inner: M,
    json: bool,
}

impl<M> SafeLines<M> {
    pub fn new(inner: M, json: bool) -> Self {
        Self { inner, json }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for SafeLines<M> {
    type Writer = SafeWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        SafeWriter { inner: self.inner.make_writer(), json: self.json }
    }
}

/// One event's writer (tracing-subscriber writes an event's line in one call).
#[derive(Debug)]
pub struct SafeWriter<W> {
    inner: W,
    json: bool,
}

impl<W: Write> Write for SafeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (line, end) = match text.strip_suffix('\n') {
            Some(line) => (line, "\n"),
            None => (text.as_ref(), ""),
        };
        if !line.chars().any(is_unsafe) {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = String::with_capacity(buf.len() + 16);
        for c in line.chars() {
            match c {
                c if !is_unsafe(c) => out.push(c),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if self.json => {
                    // Characters beyond U+FFFF are never unsafe, so one escape always fits.
                    out.push_str(&format!("\\u{:04x}", c as u32));
                }
                c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        }
        out.push_str(end);
        self.inner.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(json: bool) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_writer(SafeLines::new(move || sink.clone(), json));
        let branch = "feat/\u{202e}gnp.exe\u{9b}31m";
        let error = "line one\r\nERROR forged: a line of its own\u{1b}[2J";
        let log = || tracing::warn!(branch, error, "cannot provision");
        if json {
            tracing::subscriber::with_default(subscriber.json().finish(), log);
        } else {
            tracing::subscriber::with_default(subscriber.finish(), log);
        }
        let bytes = buffer.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn a_logged_value_can_neither_forge_a_line_nor_steer_a_terminal() {
        for json in [false, true] {
            let out = logged(json);
            assert_eq!(out.matches('\n').count(), 1, "one event, one line: {out:?}");
            assert!(!out.trim_end().chars().any(is_unsafe), "{out:?}");
            assert!(out.contains("gnp.exe"), "{out}");
            if json {
                let line: serde_json::Value = serde_json::from_str(out.trim_end()).expect("still JSON");
                assert_eq!(line["fields"]["branch"], "feat/\u{202e}gnp.exe\u{9b}31m", "the value read back whole");
            }
        }
    }
}
