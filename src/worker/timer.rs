//! A hashed timing wheel for connection deadlines (connect timeout, idle timeout).
//!
//! Hot path, O(1) per operation. Each connection has at most one entry; the entry is a hint:
//! when it fires, the owner recomputes its real deadline (which activity may have pushed
//! later) and re-arms, so reads and writes never touch the wheel (they only store a coarse
//! timestamp). Deadlines beyond one revolution wait in their slot and are re-armed when their
//! slot comes round early.
//!
//! Memory: a slot's vector grows to the entries one tick receives, and the drained vector
//! moves on to the next slot (the spare swap), so without a bound every one of the `SLOTS`
//! vectors would in time become as large as the largest burst any tick ever saw, and keep
//! it: a slowly growing high-water mark (the soak's drift, docs/soak.md). Instead every
//! vector starts with room for `KEEP` entries and a drained one larger than that is shrunk
//! back, so between bursts the wheel holds exactly `(SLOTS + 1) x KEEP` entries of room,
//! from the first tick on, whatever the peak load was.

/// Tick length. Connect timeouts are in ms, idle timeouts in seconds; 10 ms keeps the wake-up
/// rate of a busy worker at 100/s while making connect timeouts accurate to a tick.
pub const TICK_MS: u64 = 10;
/// 1024 ticks of 10 ms: one revolution is ~10 s, more than a typical connect timeout.
const SLOTS: usize = 1024;
/// Entries of room per slot (64 bytes, the smallest vector of 16-byte entries): 64 KiB per
/// wheel. Shrinking costs a `realloc` only after a tick that held more, once per tick at
/// most: never per packet.
const KEEP: usize = 4;

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
            slots: (0..SLOTS).map(|_| Vec::with_capacity(KEEP)).collect(),
            next_tick: now_ms / TICK_MS,
            len: 0,
            spare: Vec::with_capacity(KEEP),
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

    /// Entries the wheel has room for in all its vectors (what it holds in memory).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.slots.iter().map(Vec::capacity).sum::<usize>() + self.spare.capacity()
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
            if self.spare.capacity() > KEEP {
                self.spare.shrink_to(KEEP);
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

    /// Regression (soak drift): bursts of entries on many ticks used to leave every slot's
    /// vector as large as the largest burst, for good (here 64 x 1025 entries of room).
    /// Now the room after the bursts is what it was before them.
    #[test]
    fn room_after_bursts_is_what_it_was_before() {
        let mut w = TimerWheel::new(0);
        let before = w.capacity();
        assert_eq!(before, (SLOTS + 1) * KEEP);
        let mut now = 0;
        let mut fired = 0;
        // Three revolutions; each tick gets a burst of 64 entries one revolution ahead, and
        // the fired ones are dropped (their connections ended).
        for _ in 0..3 * SLOTS {
            for key in 0..64 {
                w.insert(now + 10_000, e(key));
            }
            now += TICK_MS;
            w.expire(now, |_| fired += 1);
        }
        assert!(fired > 0);
        // Let every armed entry fire: the wheel is idle again.
        now += 11_000;
        for _ in 0..SLOTS + 2 {
            w.expire(now, |_| fired += 1);
            now += TICK_MS;
        }
        assert!(w.is_empty());
        assert_eq!(w.capacity(), before, "room kept after the bursts");
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
