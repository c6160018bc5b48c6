//! The sync protocol's decisions, with no I/O: what the hub does with a
//! pushed lane, and what a node pushes next. The hub storage and the
//! simulation both call these.

use crate::wire::ErrorBody;

/// What the hub knows about one (device, lane) sequence already stored.
pub trait LaneLog {
    /// The next sequence the hub expects (1 + highest stored).
    fn next_seq(&self) -> u64;
    /// The digest stored under `seq`, if any.
    fn digest_at(&self, seq: u64) -> Option<String>;
}

/// The hub's decision for one pushed change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushDecision {
    /// New: store it under its sequence.
    Store,
    /// Already stored with the same digest: acknowledge again.
    Duplicate,
    /// Stop the lane here with this error.
    Refuse(ErrorBody),
}

/// Decides one change of a lane, in order. The caller stops the lane at the
/// first `Refuse`.
pub fn decide_push(log: &dyn LaneLog, seq: u64, digest: &str) -> PushDecision {
    let next = log.next_seq();
    if seq < next {
        return match log.digest_at(seq) {
            Some(d) if d == digest => PushDecision::Duplicate,
            Some(_) => PushDecision::Refuse(ErrorBody {
                code: "sequence_reused".into(),
                message: format!(
                    "sequence {seq} already holds a different change: this till's data folder looks copied from another till; \
                     restore it with `till backup restore --code CODE` or re-enrol it as a new device"
                ),
                expected: Some(next),
            }),
            // Compacted away: the hub cannot compare; it keeps what it has.
            None => PushDecision::Duplicate,
        };
    }
    if seq > next {
        return PushDecision::Refuse(ErrorBody {
            code: "gap".into(),
            message: format!("sequence {seq} leaves a gap: the hub expects {next}; send from there"),
            expected: Some(next),
        });
    }
    PushDecision::Store
}

// The node side needs no decision function of its own: every lane answer
// carries `acked_through` (the hub's highest stored sequence), and the node
// sets its acknowledged sequence to exactly that. A restored hub answers
// with a lower one, so the node resends from there.

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Log(BTreeMap<u64, String>);
    impl LaneLog for Log {
        fn next_seq(&self) -> u64 {
            self.0.keys().next_back().map_or(1, |s| s + 1)
        }
        fn digest_at(&self, seq: u64) -> Option<String> {
            self.0.get(&seq).cloned()
        }
    }

    #[test]
    fn pushes_are_idempotent_and_gaps_and_clones_refused() {
        let log = Log([(1, "a".to_string()), (2, "b".to_string())].into());
        assert_eq!(decide_push(&log, 3, "c"), PushDecision::Store);
        assert_eq!(decide_push(&log, 2, "b"), PushDecision::Duplicate);
        assert!(matches!(decide_push(&log, 2, "x"), PushDecision::Refuse(e) if e.code == "sequence_reused"));
        assert!(matches!(decide_push(&log, 5, "x"), PushDecision::Refuse(e) if e.expected == Some(3)));
    }
}
