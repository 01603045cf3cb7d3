//! A bounded slab: connections indexed by mio token, O(1) insert/remove, never past `cap`.
//!
//! Hot path of `serve`. Freed slots go on a free list and are reused first, so the vector only
//! grows to the high-water mark of live connections, and `insert` refuses once `cap` entries
//! are live (the caller closes the new connection and counts it).

#[derive(Debug)]
pub struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
    cap: usize,
}

impl<T> Slab<T> {
    pub fn with_capacity(initial: usize, cap: usize) -> Slab<T> {
        debug_assert!(initial <= cap);
        Slab {
            entries: Vec::with_capacity(initial),
            free: Vec::new(),
            len: 0,
            cap,
        }
    }

    /// Stores `v`; `Err(v)` back when `cap` entries are live.
    pub fn insert(&mut self, v: T) -> Result<usize, T> {
        if self.len >= self.cap {
            return Err(v);
        }
        self.len += 1;
        if let Some(i) = self.free.pop() {
            debug_assert!(self.entries[i].is_none());
            self.entries[i] = Some(v);
            Ok(i)
        } else {
            self.entries.push(Some(v));
            Ok(self.entries.len() - 1)
        }
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.entries.get_mut(i).and_then(Option::as_mut)
    }

    pub fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.entries.get_mut(i).and_then(Option::take);
        if v.is_some() {
            self.len -= 1;
            self.free.push(i);
        }
        v
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Indices of live entries (control path: shutdown and periodic sweeps).
    pub fn keys(&self) -> Vec<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|_| i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_reuses() {
        let mut s = Slab::with_capacity(0, 2);
        let a = s.insert(1).unwrap();
        let b = s.insert(2).unwrap();
        assert_eq!(s.insert(3), Err(3));
        assert_eq!(s.remove(a), Some(1));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.insert(4), Ok(a));
        assert_eq!(s.get_mut(b).copied(), Some(2));
        assert_eq!(s.len(), 2);
        assert_eq!(s.keys(), vec![0, 1]);
    }
}
