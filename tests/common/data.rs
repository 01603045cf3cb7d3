//! Test data: `XorShift`, a PRNG to generate it, and `StreamHash`, a streaming hash to compare
//! it on both ends whatever the chunking.

/// xorshift64*: fast, deterministic, good enough to make every byte matter.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// FNV-1a over 64-bit little-endian words, streaming: the result depends only on the byte
/// sequence, not on how it was cut into chunks (reads return arbitrary pieces).
#[derive(Debug, Clone)]
pub struct StreamHash {
    h: u64,
    pending: [u8; 8],
    npending: usize,
    len: u64,
}

impl Default for StreamHash {
    fn default() -> Self {
        StreamHash::new()
    }
}

impl StreamHash {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new() -> StreamHash {
        StreamHash {
            h: Self::OFFSET,
            pending: [0; 8],
            npending: 0,
            len: 0,
        }
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(Self::PRIME).rotate_left(23);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.npending > 0 {
            let take = (8 - self.npending).min(data.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&data[..take]);
            self.npending += take;
            data = &data[take..];
            if self.npending < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.pending);
            self.word(w);
            self.npending = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.word(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    /// (hash, length in bytes).
    pub fn finish(&self) -> (u64, u64) {
        let mut h = self.h;
        for &b in &self.pending[..self.npending] {
            h = (h ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
        h = (h ^ self.len).wrapping_mul(Self::PRIME);
        (h, self.len)
    }
}

#[cfg(test)]
mod selftest {
    use super::*;

    #[test]
    fn stream_hash_ignores_chunking() {
        let mut data = vec![0u8; 1000];
        XorShift::new(7).fill(&mut data);
        let mut whole = StreamHash::new();
        whole.update(&data);
        let mut pieces = StreamHash::new();
        for c in data.chunks(3) {
            pieces.update(c);
        }
        assert_eq!(whole.finish(), pieces.finish());
        data[500] ^= 1;
        let mut changed = StreamHash::new();
        changed.update(&data);
        assert_ne!(whole.finish(), changed.finish());
    }
}
