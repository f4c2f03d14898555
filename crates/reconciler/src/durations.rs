//! How long a blueprint's stack operations take, learned from those seen to end, so that a stack in
//! progress is looked at when it is expected to be done, and often near then: about a fortieth of the
//! expected time late (at least a second). The quarter rule (a quarter of the time taken so far) would
//! overshoot a 45 s stack by up to 11 s; an operation nobody has seen end yet is looked at every tenth of
//! its time so far, once, and learned; so is one that has run past its expected end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use previewd_store::{Store, StoreError};

/// The shortest gap between looks near an operation's expected end.
pub(crate) const NEAR_MIN: Duration = Duration::from_secs(1);

/// A stack operation whose time is learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Create,
    Update,
}

impl Op {
    /// The operation a stack status belongs to (a rollback is not learned: it is not what was asked).
    pub(crate) fn of(status: &str) -> Option<Self> {
        match status {
            "CREATE_IN_PROGRESS" | "CREATE_COMPLETE" => Some(Self::Create),
            "UPDATE_IN_PROGRESS" | "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS" | "UPDATE_COMPLETE" => Some(Self::Update),
            _ => None,
        }
    }
}

impl Op {
    /// Its name in the store.
    fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Create, Self::Update].into_iter().find(|op| op.as_str() == s)
    }
}

/// The learned times, by blueprint and operation: each new one weighs half. Kept in the store, so a
/// restarted process (or another replica) starts from what was learned; read from it once, at the first
/// step that needs them.
#[derive(Debug, Default)]
pub(crate) struct Durations {
    learned: Mutex<HashMap<(String, Op), Duration>>,
    loaded: tokio::sync::OnceCell<()>,
}

impl Durations {
    /// Reads what the store keeps, once (again after a failure).
    pub(crate) async fn load(&self, store: &Store) -> Result<(), StoreError> {
        self.loaded
            .get_or_try_init(|| async {
                let rows = store.stack_durations().await?;
                let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
                for (blueprint, op, millis) in rows {
                    if let Some(op) = Op::parse(&op) {
                        // What this process learned before the read stays.
                        learned.entry((blueprint, op)).or_insert(Duration::from_millis(millis.max(0) as u64));
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Learns that an operation took `took`, and keeps the new expectation in the store.
    pub(crate) async fn learn(&self, store: &Store, blueprint: &str, op: Op, took: Duration) -> Result<(), StoreError> {
        let expected = {
            let mut learned = self.learned.lock().unwrap_or_else(|p| p.into_inner());
            let entry = learned.entry((blueprint.to_owned(), op)).or_insert(took);
            *entry = (*entry + took) / 2;
            *entry
        };
        store.record_stack_duration(blueprint, op.as_str(), expected.as_millis() as i64).await
    }

    pub(crate) fn expected(&self, blueprint: &str, op: Op) -> Option<Duration> {
        self.learned.lock().unwrap_or_else(|p| p.into_inner()).get(&(blueprint.to_owned(), op)).copied()
    }
}

/// The gap before the next look at an operation `elapsed` into it, expected to take `expected`: a quarter
/// of the time taken (between `min` and `max`) while the end is far; from four fifths of the expected time
/// to a quarter past it, every fortieth of it (at least a second); after that, as an operation of
/// unknown length (it is not the one it was expected to be, and its end may be near). Nothing expected
/// (a deletion, a rollback): the quarter rule.
pub(crate) fn next_look(elapsed: Duration, expected: Option<Duration>, min: Duration, max: Duration) -> Duration {
    let quarter = (elapsed / 4).clamp(min, max);
    let Some(e) = expected else { return quarter };
    let (from, until) = (e.mul_f64(0.8), e.mul_f64(1.25));
    if elapsed >= until {
        unknown_look(elapsed, min, max)
    } else if elapsed >= from {
        near(e)
    } else if elapsed + quarter < from {
        quarter
    } else {
        (from - elapsed).max(NEAR_MIN)
    }
}

/// The shortest gap between looks at a create or update whose time nobody has learned yet.
const UNKNOWN_MIN: Duration = Duration::from_secs(2);

/// The gap before the next look at a create or update `elapsed` into it, of a kind never seen to end (a
/// new installation's first stack of a blueprint): a tenth of the time taken, at least two seconds (or
/// `min`, if less), at most `max`, so it is seen done at most a tenth (or two seconds) late. That costs
/// about twice the quarter rule's looks, once per blueprint and operation: afterwards its time is known.
pub(crate) fn unknown_look(elapsed: Duration, min: Duration, max: Duration) -> Duration {
    (elapsed / 10).clamp(UNKNOWN_MIN.min(min), max)
}

/// The gap between looks near an expected end.
fn near(expected: Duration) -> Duration {
    (expected / 40).max(NEAR_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(60);

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    /// When a stack that ends at `ends` is first seen done, looking from `start` as `next_look` says.
    fn seen_done(ends: Duration, expected: Option<Duration>) -> Duration {
        let mut at = next_look(Duration::ZERO, expected, MIN, MAX);
        while at < ends {
            at += next_look(at, expected, MIN, MAX);
        }
        at
    }

    #[test]
    fn a_stack_is_looked_at_near_its_expected_end() {
        // Unknown: a quarter of the time taken, so a 45 s stack is seen done 4 s late at best.
        assert!(seen_done(s(45.0), None) - s(45.0) > s(3.0), "{:?}", seen_done(s(45.0), None));
        // Learned: seen within a fortieth of the expected time (at least a second) of its end, whether it
        // ends as expected, early or late.
        for (ends, expected) in [(45.0, 45.0), (37.0, 45.0), (42.0, 52.0), (55.0, 45.0), (600.0, 590.0)] {
            let late = seen_done(s(ends), Some(s(expected))) - s(ends);
            assert!(late <= near(s(expected)), "{ends} s, expected {expected} s: {late:?} late");
        }
        // Ten minutes expected: about eighteen looks near the end, not one every second.
        let looks = std::iter::successors(Some(s(480.0)), |&at| Some(at + next_look(at, Some(s(600.0)), MIN, MAX)))
            .take_while(|&at| at < s(750.0))
            .count();
        assert!((15..=22).contains(&looks), "{looks}");
        // Far from it, looks are as sparse as before.
        assert_eq!(next_look(s(8.0), Some(s(600.0)), MIN, MAX), MIN);
        // Later than expected, it is an operation of unknown length: seen at most a tenth late. (It was
        // a quarter: a 60 s stack expected to take 45 s was seen done 15 s late.)
        assert_eq!(next_look(s(400.0), Some(s(100.0)), MIN, MAX), s(40.0));
        let late = seen_done(s(60.0), Some(s(45.0))) - s(60.0);
        assert!(late <= s(6.0), "{late:?} late");
        // An operation expected to take no time is looked at after a second, not `min`.
        assert_eq!(next_look(Duration::ZERO, Some(s(0.2)), MIN, MAX), NEAR_MIN);
    }

    #[test]
    fn an_operation_of_unknown_length_is_seen_done_at_most_a_tenth_late() {
        assert_eq!(unknown_look(s(3.0), MIN, MAX), s(2.0));
        assert_eq!(unknown_look(s(45.0), MIN, MAX), s(4.5));
        assert_eq!(unknown_look(s(3_000.0), MIN, MAX), MAX);
        assert_eq!(unknown_look(s(3.0), s(0.5), MAX), s(0.5), "never slower than poll_min");
        // Looked at from the start, a 60 s operation is seen done within 6 s of its end.
        let mut t = s(1.0);
        while t < s(60.0) {
            t += unknown_look(t, MIN, MAX);
        }
        assert!(t - s(60.0) <= s(6.0), "{t:?}");
    }

    #[tokio::test]
    async fn durations_are_learned_per_blueprint_and_operation_and_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let store = Store::connect(&url).await.expect("store");
        let d = Durations::default();
        d.load(&store).await.expect("load");
        assert_eq!(d.expected("webapp", Op::Create), None);
        d.learn(&store, "webapp", Op::Create, s(40.0)).await.expect("learn");
        d.learn(&store, "webapp", Op::Create, s(60.0)).await.expect("learn");
        assert_eq!(d.expected("webapp", Op::Create), Some(s(50.0)));
        assert_eq!(d.expected("webapp", Op::Update), None);
        assert_eq!(d.expected("beanstalk", Op::Create), None);
        assert_eq!(Op::of("UPDATE_ROLLBACK_COMPLETE"), None);
        // A process started later knows them from its first step.
        let later = Durations::default();
        later.load(&store).await.expect("load");
        assert_eq!(later.expected("webapp", Op::Create), Some(s(50.0)));
        assert_eq!(later.expected("webapp", Op::Update), None);
    }
}
