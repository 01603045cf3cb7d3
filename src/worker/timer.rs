//! A hashed timing wheel for connection deadlines (connect timeout, idle timeout).
//!
//! Hot path, O(1) per operation. Each connection has at most one entry; the entry is a hint:
//! when it fires, the owner recomputes its real deadline (which activity may have pushed
//! later) and re-arms, so reads and writes never touch the wheel (they only store a coarse
//! timestamp). Deadlines beyond one revolution wait in their slot and are re-armed when their
//! slot comes round early.

/// Tick length. Connect timeouts are in ms, idle timeouts in seconds; 10 ms keeps the wake-up
/// rate of a busy worker at 100/s while making connect timeouts accurate to a tick.
pub const TICK_MS: u64 = 10;
/// 1024 ticks of 10 ms: one revolution is ~10 s, more than a typical connect timeout.
const SLOTS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerEntry {
    pub key: usize,
    pub generation: u32,
}

#[derive(Debug)]
pub struct TimerWheel {
    slots: Vec<Vec<TimerEntry>>,
    /// The next tick to be processed.
    next_tick: u64,
    len: usize,
    spare: Vec<TimerEntry>,
}

impl TimerWheel {
    pub fn new(now_ms: u64) -> TimerWheel {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next_tick: now_ms / TICK_MS,
            len: 0,
            spare: Vec::new(),
        }
    }

    /// Arm `entry` to fire at or soon after `deadline_ms`.
    pub fn insert(&mut self, deadline_ms: u64, entry: TimerEntry) {
        let tick = deadline_ms.div_ceil(TICK_MS).max(self.next_tick);
        self.slots[(tick as usize) % SLOTS].push(entry);
        self.len += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Milliseconds until the next tick is due, for the poll timeout; `None` when empty.
    pub fn timeout_ms(&self, now_ms: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        Some((self.next_tick * TICK_MS).saturating_sub(now_ms))
    }

    /// Call `fire` for every entry in the slots of all ticks up to `now_ms`. Entries whose real
    /// deadline lies later must be re-inserted by the caller. At most one revolution is walked
    /// per call, so a long stall costs O(SLOTS), not O(elapsed).
    pub fn expire<F: FnMut(TimerEntry)>(&mut self, now_ms: u64, mut fire: F) {
        let now_tick = now_ms / TICK_MS;
        let mut walked = 0;
        while self.next_tick <= now_tick && walked < SLOTS {
            let slot = (self.next_tick as usize) % SLOTS;
            std::mem::swap(&mut self.spare, &mut self.slots[slot]);
            self.next_tick += 1;
            walked += 1;
            self.len -= self.spare.len();
            for entry in self.spare.drain(..) {
                fire(entry);
            }
        }
        if self.next_tick <= now_tick {
            self.next_tick = now_tick + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: usize) -> TimerEntry {
        TimerEntry { key, generation: 0 }
    }

    #[test]
    fn fires_after_deadline_not_before() {
        let mut w = TimerWheel::new(0);
        w.insert(35, e(1));
        let mut fired = Vec::new();
        w.expire(30, |x| fired.push(x.key));
        assert!(fired.is_empty());
        w.expire(40, |x| fired.push(x.key));
        assert_eq!(fired, vec![1]);
        assert!(w.is_empty());
    }

    #[test]
    fn far_deadline_fires_early_for_rearm() {
        let mut w = TimerWheel::new(0);
        w.insert(20_000, e(7));
        let mut fired = 0;
        // One revolution later the slot comes round: the owner sees its deadline is not due.
        w.expire(10_300, |_| fired += 1);
        assert_eq!(fired, 1);
    }

    #[test]
    fn past_deadline_fires_on_next_expire() {
        let mut w = TimerWheel::new(1000);
        w.insert(10, e(3));
        let mut fired = 0;
        w.expire(1000, |_| fired += 1);
        assert_eq!(fired, 1);
    }
}
