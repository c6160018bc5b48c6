//! Hybrid logical clock: physical milliseconds in the high 48 bits, a
//! counter in the low 16. The physical time is always passed in.

use serde::{Deserialize, Serialize};

/// One hybrid logical clock reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    const COUNTER_BITS: u32 = 16;

    /// The highest valid reading: stores keep readings in SQLite's signed
    /// 64-bit integers. `Op::check` refuses an operation above it. (A
    /// push with `u64::MAX`, run through the fuzz harness, made the next
    /// local write overflow the clock: a panic in debug builds, a clock
    /// wrapped to 0 in release builds.)
    pub const MAX: Hlc = Hlc(i64::MAX as u64);

    /// The highest reading a clock adopts from elsewhere (the year 4199 or
    /// so). A clock at or below it has 2^62 ticks to go before its own
    /// readings pass [`Hlc::MAX`], so a hostile reading can neither
    /// overflow a clock nor make its later writes invalid.
    pub const OBSERVE_MAX: Hlc = Hlc(Self::MAX.0 >> 1);

    /// A reading at `wall_ms` with counter 0.
    pub fn from_wall_ms(wall_ms: u64) -> Self {
        Hlc(wall_ms << Self::COUNTER_BITS)
    }

    /// The physical part, in Unix milliseconds.
    pub fn wall_ms(self) -> u64 {
        self.0 >> Self::COUNTER_BITS
    }

    /// The logical counter.
    pub fn counter(self) -> u64 {
        self.0 & ((1 << Self::COUNTER_BITS) - 1)
    }
}

/// A strictly monotonic clock. Persist [`HlcClock::last`] and restart with
/// [`HlcClock::new`]: the next reading is above both the persisted reading
/// and the wall clock.
#[derive(Clone, Debug, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock that resumes after `persisted`.
    pub fn new(persisted: Hlc) -> Self {
        Self { last: persisted }
    }

    /// The last reading handed out or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new reading, strictly above every earlier one.
    pub fn tick(&mut self, physical_ms: u64) -> Hlc {
        let physical = Hlc::from_wall_ms(physical_ms);
        // A counter overflow carries into the millisecond part, which keeps
        // the clock monotonic at the price of running a little ahead.
        self.last = if physical > self.last { physical } else { Hlc(self.last.0 + 1) };
        self.last
    }

    /// Merges a reading received from another device or the hub, so that
    /// every later local reading is above it. A reading above
    /// [`Hlc::OBSERVE_MAX`] is not adopted (see there).
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last && remote <= Hlc::OBSERVE_MAX {
            self.last = remote;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_strictly_monotonic_even_when_wall_clock_goes_back() {
        let mut c = HlcClock::new(Hlc::default());
        let a = c.tick(1_000);
        let b = c.tick(1_000);
        let d = c.tick(900);
        assert!(a < b && b < d);
        assert_eq!(a.wall_ms(), 1_000);
        assert_eq!(d.wall_ms(), 1_000);
        assert_eq!(d.counter(), 2);
    }

    #[test]
    fn observe_moves_the_clock_past_remote_readings() {
        let mut c = HlcClock::new(Hlc::default());
        c.tick(10);
        c.observe(Hlc::from_wall_ms(5_000));
        assert!(c.tick(20) > Hlc::from_wall_ms(5_000));
    }

    #[test]
    fn readings_past_max_are_not_observed_so_tick_cannot_overflow() {
        let mut c = HlcClock::new(Hlc::default());
        c.observe(Hlc(u64::MAX));
        c.observe(Hlc::MAX);
        assert_eq!(c.last(), Hlc::default());
        c.observe(Hlc::OBSERVE_MAX);
        let t = c.tick(1);
        assert!(t > Hlc::OBSERVE_MAX && t <= Hlc::MAX);
    }

    #[test]
    fn restart_resumes_after_persisted_reading() {
        let mut c = HlcClock::new(Hlc::from_wall_ms(9_000));
        assert!(c.tick(1_000) > Hlc::from_wall_ms(9_000));
        let mut c = HlcClock::new(Hlc::from_wall_ms(9_000));
        assert_eq!(c.tick(10_000), Hlc::from_wall_ms(10_000));
    }
}
