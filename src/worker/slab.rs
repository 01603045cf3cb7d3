//! A slab of connections indexed by `usize` keys, so mio tokens map to state without hashing.
//!
//! Hot path. Keys are reused after removal, but not before [`Slab::release_removed`], which
//! the worker calls once per loop turn after the whole event batch: an event of that batch
//! for a connection closed earlier in it finds an empty slot, never a new connection that took
//! the same key (issue 10, bug 6). Each insert bumps a generation so that stale timer entries
//! for a reused key can be told apart.

#[derive(Debug)]
pub struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    /// Removed during this loop turn; free again at `release_removed`.
    removed: Vec<usize>,
    generation: u32,
    len: usize,
}

impl<T> Slab<T> {
    pub fn with_capacity(capacity: usize) -> Slab<T> {
        Slab {
            entries: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            removed: Vec::new(),
            generation: 0,
            len: 0,
        }
    }

    /// The key the next insert will use, and the generation to store in the value.
    pub fn reserve_key(&mut self) -> (usize, u32) {
        self.generation = self.generation.wrapping_add(1);
        let key = self.free.last().copied().unwrap_or(self.entries.len());
        (key, self.generation)
    }

    /// Insert at the key returned by the last `reserve_key()`.
    pub fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(key) => {
                debug_assert!(self.entries[key].is_none());
                self.entries[key] = Some(value);
                key
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.entries.get_mut(key).and_then(|e| e.as_mut())
    }

    pub fn get(&self, key: usize) -> Option<&T> {
        self.entries.get(key).and_then(|e| e.as_ref())
    }

    pub fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.entries.get_mut(key)?.take()?;
        self.removed.push(key);
        self.len -= 1;
        Some(value)
    }

    /// Make the keys removed since the last call available again (end of a loop turn).
    pub fn release_removed(&mut self) {
        self.free.append(&mut self.removed);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys of all present entries (control path: shutdown).
    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_some())
            .map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_keys_and_bumps_generation() {
        let mut s = Slab::with_capacity(2);
        let (k0, g0) = s.reserve_key();
        assert_eq!(s.insert("a"), k0);
        let (k1, g1) = s.reserve_key();
        assert_eq!(s.insert("b"), k1);
        assert_ne!(g0, g1);
        assert_eq!(s.remove(k0), Some("a"));
        s.release_removed();
        let (k2, _) = s.reserve_key();
        assert_eq!(k2, k0);
        assert_eq!(s.insert("c"), k0);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(k0), Some(&"c"));
    }

    /// Issue 10, bug 6: a key freed during an event batch is not handed to a new entry in the
    /// same batch, so a later event of that batch for the old entry finds nothing.
    #[test]
    fn a_removed_key_is_not_reused_within_the_turn() {
        let mut s = Slab::with_capacity(2);
        let old = s.insert("old");
        assert_eq!(s.remove(old), Some("old"));
        let (reserved, _) = s.reserve_key();
        let new = s.insert("new");
        assert_eq!(reserved, new);
        assert_ne!(new, old, "a key was reused within the turn it was freed in");
        assert_eq!(s.get(old), None, "a stale event would act on the new entry");
        s.release_removed();
        let (next, _) = s.reserve_key();
        assert_eq!(next, old, "released at the end of the turn");
        assert_eq!(s.insert("later"), old);
    }
}
