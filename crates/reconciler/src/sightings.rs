//! What this process last saw of the account's stacks, so that one listing serves the decisions it
//! prompts: the reaper lists every stack, then tears down what it found orphaned, and each teardown can
//! start from that listing instead of describing its stack again. Only the stacks of those teardowns
//! are kept past the pass. A sighting stands in for a
//! DescribeStacks only while it is young, only if it shows a settled stack (one in progress changes by
//! itself), and only if this process has not acted on the stack since the listing began. A listing's
//! silence is no sighting: a stack made since (by another replica, or by a person) would be missed.
//! A teardown is the one step that starts from a sighting, and it is safe on a stale one: the stack is
//! deleted by its id (a stack made since under the same name is never hit), a stack deleted meanwhile
//! makes DeleteStack a no-op, and a bucket added meanwhile fails the deletion, which is retried after a
//! fresh look.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use previewd_cloud::Stack;
use tokio::time::Instant;

/// How long a listing's view of a settled stack may stand in for a fresh look: a reaper pass and the
/// teardowns it starts take seconds to a minute between them.
pub(crate) const SIGHTING_FRESH: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct Sightings {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// When the last complete listing began, and every live stack it showed, by name.
    listed_at: Option<Instant>,
    stacks: HashMap<String, Stack>,
    /// Pages that listing took.
    pages: usize,
    /// When this process last acted on a stack (create, update, delete), by name, since that listing.
    acted: HashMap<String, Instant>,
}

impl Sightings {
    /// A complete listing that began at `started` and took `pages`, with the stacks of it worth keeping
    /// (a stack left out is looked at afresh when asked for).
    pub(crate) fn listed<'a>(&self, stacks: impl Iterator<Item = &'a Stack>, pages: usize, started: Instant) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.listed_at.is_some_and(|at| at > started) {
            return; // a newer listing is already here
        }
        seen.listed_at = Some(started);
        seen.stacks = stacks.map(|s| (s.name.clone(), s.clone())).collect();
        seen.pages = pages;
        // An action before the listing began shows in it.
        seen.acted.retain(|_, at| *at >= started);
    }

    /// Keeps the sightings of the stacks `keep` names only: a listing is a copy of every stack, and an
    /// idle fleet need not hold one between passes.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).stacks.retain(|name, _| keep(name));
    }

    /// What a listing whose stacks are not kept (the shared poll of [`crate::batch`]) tells: its pages.
    pub(crate) fn paged(&self, pages: usize) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).pages = pages;
    }

    /// This process is about to act on the stack: what was seen of it before is stale from now.
    pub(crate) fn acting(&self, name: &str) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).acted.insert(name.to_owned(), Instant::now());
    }

    /// The stack as a listing younger than `fresh` showed it, settled; `None` when no such sighting
    /// stands in for a look.
    pub(crate) fn settled(&self, name: &str, fresh: Duration) -> Option<Stack> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let at = seen.listed_at?;
        if at.elapsed() > fresh || seen.acted.contains_key(name) {
            return None;
        }
        seen.stacks.get(name).filter(|s| !s.in_progress()).cloned()
    }

    /// The pages the last complete listing took (one before any).
    pub(crate) fn pages(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).pages.max(1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn stack(name: &str, status: &str) -> Stack {
        Stack {
            id: format!("id/{name}"),
            name: name.into(),
            status: status.into(),
            reason: None,
            created_at: None,
            updated_at: None,
            tags: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sighting_stands_in_only_while_young_settled_and_not_acted_on() {
        let s = Sightings::default();
        assert_eq!(s.settled("a", SIGHTING_FRESH), None, "nothing listed yet");
        let listing = [stack("a", "CREATE_COMPLETE"), stack("b", "UPDATE_IN_PROGRESS"), stack("c", "UPDATE_COMPLETE")];
        s.listed(listing.iter(), 2, Instant::now());
        assert_eq!(s.pages(), 2);
        assert_eq!(s.settled("a", SIGHTING_FRESH), Some(stack("a", "CREATE_COMPLETE")));
        assert_eq!(s.settled("b", SIGHTING_FRESH), None, "in progress: it changes by itself");
        assert_eq!(s.settled("gone", SIGHTING_FRESH), None, "a stack made since the listing would be missed");
        s.acting("c");
        assert_eq!(s.settled("c", SIGHTING_FRESH), None, "acted on since the listing");
        tokio::time::advance(SIGHTING_FRESH + Duration::from_secs(1)).await;
        assert_eq!(s.settled("a", SIGHTING_FRESH), None, "too old");
        // A listing begun after the action shows its result.
        s.listed(listing.iter(), 2, Instant::now());
        assert!(s.settled("c", SIGHTING_FRESH).is_some());
        // One begun before a listing already here changes nothing.
        s.listed([].iter(), 1, Instant::now() - Duration::from_secs(5));
        assert!(s.settled("a", SIGHTING_FRESH).is_some());
        // Only what is kept stands in; the pages of a listing not kept still count.
        s.retain(|name| name == "c");
        assert_eq!(s.settled("a", SIGHTING_FRESH), None);
        assert!(s.settled("c", SIGHTING_FRESH).is_some());
        s.paged(3);
        assert_eq!(s.pages(), 3);
    }
}
