//! Stock on hand, derived from ledgers: the newest count plus the movements
//! that count had not seen. A count names the newest count it had seen
//! (`base_count`) and the movements it had seen since, so what a count saw
//! is the union along that chain.

use crate::hlc::Hlc;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// A stock count of one SKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Count {
    pub id: Uuid,
    pub hlc: Hlc,
    pub qty: i64,
    pub base_count: Option<Uuid>,
    pub seen: Vec<Uuid>,
}

/// A stock movement of one SKU (negative for sales).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movement {
    pub id: Uuid,
    pub qty: i64,
}

/// The newest count: highest clock, then highest id.
pub fn newest_count(counts: &[Count]) -> Option<&Count> {
    counts.iter().max_by_key(|c| (c.hlc, c.id))
}

/// Every movement a count had seen, following its chain of base counts.
pub fn seen_by(count: &Count, counts: &[Count]) -> HashSet<Uuid> {
    let by_id: HashMap<Uuid, &Count> = counts.iter().map(|c| (c.id, c)).collect();
    let mut seen = HashSet::new();
    let mut visited = HashSet::new();
    let mut next = Some(count);
    while let Some(c) = next {
        if !visited.insert(c.id) {
            break;
        }
        seen.extend(c.seen.iter().copied());
        next = c.base_count.and_then(|b| by_id.get(&b).copied());
    }
    seen
}

/// Stock on hand of one SKU.
pub fn on_hand(counts: &[Count], movements: &[Movement]) -> i64 {
    match newest_count(counts) {
        None => movements.iter().map(|m| m.qty).sum(),
        Some(c) => {
            let seen = seen_by(c, counts);
            c.qty + movements.iter().filter(|m| !seen.contains(&m.id)).map(|m| m.qty).sum::<i64>()
        }
    }
}

/// The movements a new count must record: those present that the base
/// count's chain had not seen.
pub fn unseen_since(base: Option<&Count>, counts: &[Count], movements: &[Movement]) -> Vec<Uuid> {
    let seen = base.map(|b| seen_by(b, counts)).unwrap_or_default();
    let mut out: Vec<Uuid> = movements.iter().map(|m| m.id).filter(|id| !seen.contains(id)).collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u128, qty: i64) -> Movement {
        Movement { id: Uuid::from_u128(id), qty }
    }

    #[test]
    fn count_made_while_another_till_sells_stays_right() {
        // Received 10; till A counts 8 having seen the receipt; till B sold 3
        // offline, which A's count had not seen.
        let moves = vec![m(1, 10), m(2, -3)];
        let count =
            Count { id: Uuid::from_u128(100), hlc: Hlc(5), qty: 8, base_count: None, seen: vec![Uuid::from_u128(1)] };
        assert_eq!(on_hand(std::slice::from_ref(&count), &moves), 5);
        assert_eq!(on_hand(&[], &moves), 7);
    }

    #[test]
    fn newer_count_follows_its_chain() {
        let moves = vec![m(1, 10), m(2, -1), m(3, -2)];
        let c1 =
            Count { id: Uuid::from_u128(100), hlc: Hlc(5), qty: 9, base_count: None, seen: vec![Uuid::from_u128(1)] };
        let c2 = Count {
            id: Uuid::from_u128(101),
            hlc: Hlc(6),
            qty: 7,
            base_count: Some(c1.id),
            seen: vec![Uuid::from_u128(2)],
        };
        let counts = vec![c1.clone(), c2];
        assert_eq!(on_hand(&counts, &moves), 5);
        assert_eq!(unseen_since(Some(&c1), &counts, &moves), vec![Uuid::from_u128(2), Uuid::from_u128(3)]);
    }

    #[test]
    fn selling_past_stock_goes_negative() {
        assert_eq!(on_hand(&[], &[m(1, 1), m(2, -1), m(3, -1)]), -1);
    }
}
