//! Listings served in pages as GitHub serves them: `per_page` within a cap, and a `Link` header with the
//! pages around the one asked for.

use serde_json::Value;

use super::reply::Reply;
use super::routes::Asked;

/// GitHub's page size when a listing names no `per_page`.
const DEFAULT_PER_PAGE: usize = 30;
/// GitHub serves at most 100 items a page whatever `per_page` asks.
pub(super) const MAX_PER_PAGE: usize = 100;

impl Asked<'_> {
    /// This same request for another page, as GitHub writes it in `Link`: the query kept, `page` last.
    fn page_url(&self, page: usize) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.query.iter().filter(|(k, _)| k != "page") {
            query.append_pair(k, v);
        }
        query.append_pair("page", &page.to_string());
        format!("http://{}{}?{}", self.host, self.raw_path, query.finish())
    }

    /// GitHub's `Link` header for `page` of `last`: prev, next, last, first, each only where it applies,
    /// and no header at all for a listing that fits on one page.
    fn link(&self, page: usize, last: usize) -> Option<String> {
        if last <= 1 && page <= 1 {
            return None;
        }
        let mut rels = Vec::new();
        if page > 1 {
            rels.push((page - 1, "prev"));
        }
        if page < last {
            rels.push((page + 1, "next"));
            rels.push((last, "last"));
        }
        if page > 1 {
            rels.push((1, "first"));
        }
        let parts: Vec<String> =
            rels.into_iter().map(|(p, rel)| format!("<{}>; rel=\"{rel}\"", self.page_url(p))).collect();
        Some(parts.join(", "))
    }
}

/// How a listing is to be paged: the page asked for (1 when none), the fake's cap on items a page, and
/// whether to send `Link`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Paging {
    pub(super) page: usize,
    pub(super) cap: usize,
    pub(super) link: bool,
}

/// One page of `items` as GitHub serves a listing: `per_page` items (30 when not asked) within the cap,
/// and a `Link` header unless everything fits on one page.
pub(super) fn listing(asked: &Asked<'_>, paging: Paging, items: Vec<Value>) -> Reply {
    let (items, link) = page(asked, paging, items);
    let mut reply = Reply::ok(&Value::Array(items));
    if let Some(link) = link {
        reply.header("link", &link);
    }
    reply
}

/// The items of the page asked for, and its `Link` header: for a listing GitHub wraps in an object
/// (`{"total_count": …, "check_runs": [page]}`), paged as a bare one is.
pub(super) fn page(asked: &Asked<'_>, paging: Paging, items: Vec<Value>) -> (Vec<Value>, Option<String>) {
    let asked_per_page = asked.param("per_page").and_then(|p| p.parse().ok()).unwrap_or(DEFAULT_PER_PAGE);
    let per_page = asked_per_page.clamp(1, paging.cap);
    let last = items.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = items.into_iter().skip((paging.page - 1).saturating_mul(per_page)).take(per_page).collect();
    let link = if paging.link { asked.link(paging.page, last) } else { None };
    (items, link)
}
