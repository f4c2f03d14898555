//! AWS's XML: reading blocks out of moto's answers, and writing AWS's error documents and the answers the
//! proxy gives itself.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::state::StatusOverride;

pub(super) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub(super) fn request_id() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0xfff),
        fastrand::u16(..0xfff),
        fastrand::u64(..1 << 48)
    )
}

pub(super) fn error_document(service: &str, code: &str, message: &str) -> String {
    let id = request_id();
    match service {
        "s3" => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{id}</RequestId><HostId>{id}</HostId></Error>"
        ),
        "route53" => format!(
            "<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{id}</RequestId></ErrorResponse>"
        ),
        _ => format!(
            "<ErrorResponse xmlns=\"http://cloudformation.amazonaws.com/doc/2010-05-15/\">\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n  <RequestId>{id}</RequestId>\n</ErrorResponse>"
        ),
    }
}

pub(super) fn xml(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "text/xml")], body).into_response()
}

/// Every `<tag>…</tag>` block's inside, in order.
pub(super) fn blocks(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    out
}

/// The length of the `<member>…</member>` that `xml` starts with, members inside it included.
pub(super) fn member_len(xml: &str) -> Option<usize> {
    let (open, close) = ("<member>", "</member>");
    let (mut depth, mut at) = (0usize, 0usize);
    loop {
        let next_open = xml[at..].find(open).map(|i| at + i);
        let next_close = xml[at..].find(close).map(|i| at + i)?;
        match next_open {
            Some(o) if o < next_close => {
                depth += 1;
                at = o + open.len();
            }
            _ => {
                depth -= 1;
                at = next_close + close.len();
                if depth == 0 {
                    return Some(at);
                }
            }
        }
    }
}

/// A stack's `<member>` with the status (and reason) of `o` in place of its own.
pub(super) fn with_status(member: &str, o: &StatusOverride) -> String {
    let mut member = member.to_owned();
    if let (Some(s), Some(e)) = (member.find("<StackStatusReason>"), member.find("</StackStatusReason>")) {
        member.replace_range(s..e + "</StackStatusReason>".len(), "");
    }
    match (member.find("<StackStatus>"), member.find("</StackStatus>")) {
        (Some(s), Some(e)) => format!(
            "{}<StackStatus>{}</StackStatus><StackStatusReason>{}</StackStatusReason>{}",
            &member[..s],
            o.status,
            o.reason,
            &member[e + "</StackStatus>".len()..]
        ),
        _ => member,
    }
}

pub(super) fn unescape_xml(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

pub(super) fn first(xml: &str, tag: &str) -> Option<String> {
    blocks(xml, tag).into_iter().next()
}
