//! A hierarchical counter in the spirit of the kernel's `page_counter`: it knows usage, limits and
//! peak, nothing else. The tree walk lives in the ledger so a failed charge touches nothing.

use serde::{Deserialize, Serialize};

/// "No limit": the value the kernel prints as `max`.
pub const UNLIMITED: u64 = u64::MAX;

/// Which limit a write targets, named after the cgroup files `<pool>.max|low|min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKind {
    Max,
    Low,
    Min,
    /// The per-region pin limit (no kernel file; enforced by the service).
    PinMax,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [LimitKind::Max, LimitKind::Low, LimitKind::Min, LimitKind::PinMax];

    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Max => "max",
            LimitKind::Low => "low",
            LimitKind::Min => "min",
            LimitKind::PinMax => "pin.max",
        }
    }
}

/// Usage and limits of one cgroup in one pool. `usage` includes all descendants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub usage: u64,
    /// Bytes charged to this cgroup itself, not to a child (needed for reparenting and the
    /// "parent = children + own" invariant).
    pub local: u64,
    pub peak: u64,
    pub max: u64,
    pub low: u64,
    pub min: u64,
    /// Pinned bytes (CMA always, vram on request) and their limit.
    pub pinned: u64,
    pub pin_max: u64,
    /// How often a charge hit `max` (refused in enforce mode, let through in observe mode),
    /// like `memory.events max`.
    pub max_events: u64,
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            usage: 0,
            local: 0,
            peak: 0,
            max: UNLIMITED,
            low: 0,
            min: 0,
            pinned: 0,
            pin_max: UNLIMITED,
            max_events: 0,
        }
    }
}

impl Counter {
    /// Would `size` more bytes stay within `max`?
    pub fn fits(&self, size: u64) -> bool {
        self.usage.checked_add(size).is_some_and(|u| u <= self.max)
    }

    pub fn pin_fits(&self, size: u64) -> bool {
        self.pinned.checked_add(size).is_some_and(|u| u <= self.pin_max)
    }

    pub(crate) fn add(&mut self, size: u64) {
        self.usage += size;
        self.peak = self.peak.max(self.usage);
    }

    pub(crate) fn sub(&mut self, size: u64) {
        debug_assert!(self.usage >= size, "counter underflow");
        self.usage -= size;
    }

    pub fn limit(&self, kind: LimitKind) -> u64 {
        match kind {
            LimitKind::Max => self.max,
            LimitKind::Low => self.low,
            LimitKind::Min => self.min,
            LimitKind::PinMax => self.pin_max,
        }
    }

    pub(crate) fn set_limit(&mut self, kind: LimitKind, value: u64) {
        match kind {
            LimitKind::Max => self.max = value,
            LimitKind::Low => self.low = value,
            LimitKind::Min => self.min = value,
            LimitKind::PinMax => self.pin_max = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_respects_max_and_overflow() {
        let mut c = Counter { max: 100, ..Counter::default() };
        c.add(60);
        assert!(c.fits(40));
        assert!(!c.fits(41));
        c.max = UNLIMITED;
        assert!(!c.fits(u64::MAX), "overflow never fits");
    }

    #[test]
    fn peak_tracks_high_water_mark() {
        let mut c = Counter::default();
        c.add(10);
        c.add(5);
        c.sub(12);
        assert_eq!((c.usage, c.peak), (3, 15));
    }
}
