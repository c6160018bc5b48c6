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
                     keep it offline and enrol it again as a new device (`till node init --data NEWDIR --hub URL --code CODE`)"
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

/// Delay before retry number `attempt` (0-based): exponential backoff with
/// full jitter and a cap. `random` is a uniform draw supplied by the caller
/// (the core draws no randomness itself).
pub fn backoff_ms(attempt: u32, base_ms: u64, cap_ms: u64, random: u64) -> u64 {
    let ceiling = base_ms.saturating_mul(1u64 << attempt.min(30)).min(cap_ms).max(1);
    random % (ceiling + 1)
}

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

    #[test]
    fn backoff_is_jittered_bounded_and_capped() {
        for attempt in 0..40 {
            let ceiling = (500u64 << attempt.min(30)).min(60_000);
            for r in [0, 1, 499, 12_345, u64::MAX] {
                let d = backoff_ms(attempt, 500, 60_000, r);
                assert!(d <= ceiling, "attempt {attempt}: {d} > {ceiling}");
            }
        }
        assert_eq!(backoff_ms(0, 500, 60_000, 0), 0);
        assert_eq!(backoff_ms(3, 500, 60_000, 4_000), 4_000);
        assert_eq!(backoff_ms(20, 500, 60_000, 60_000), 60_000);
        // Full jitter: draws spread over the whole range.
        let draws: std::collections::BTreeSet<u64> =
            (0..100u64).map(|r| backoff_ms(5, 500, 60_000, r * 997) / 1_000).collect();
        assert!(draws.len() > 10);
    }
}
