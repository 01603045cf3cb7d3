//! The fixed hash functions of the crate: flow keys ([`FlowKey`]; `source_ip_hash`,
//! `five_tuple_hash` for the balancer), backend names (Maglev offset/skip, rendezvous seeds)
//! and [`hash_bytes`] for arbitrary bytes. At the crate root and importing nothing from it: the
//! balancer, Maglev and whoever else needs a reproducible hash depend on this, never the
//! reverse.
//!
//! Hot path: [`source_ip_hash`] / [`five_tuple_hash`] run once per new connection (or UDP
//! session); they hash at most 38 bytes from a stack buffer and never allocate.
//!
//! Invariants: every function here is a pure function of its input bytes. The function is
//! SipHash-1-3 (Aumasson and Bernstein; the variant Rust's `std` uses for `HashMap`) written out
//! here with *constant* keys, so every worker, every restart, every host and every release
//! built from this file maps a key to the same value: the selection has to be reproducible
//! across instances (two balancers in front of the same backends must agree), which a
//! per-process random seed (`std::collections::hash_map::RandomState`) would break. The golden
//! vectors in the tests pin the outputs; if one fails, the mapping of every client to its
//! backend has changed, which is a release-note-worthy event, not a test to update lightly.
//!
//! The keys are ASCII strings read as little-endian `u64`s, so they can be re-derived from the
//! source text. They are not secret: the hash has to be reproducible, not unpredictable.

use std::net::{IpAddr, SocketAddr};

/// What hash-based algorithms hash. `protocol` is the IP protocol number (6 TCP, 17 UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub protocol: u8,
}

/// A 128-bit SipHash key as two little-endian words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(pub u64, pub u64);

impl Key {
    const fn from_ascii(k: &[u8; 16]) -> Key {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            a[i] = k[i];
            b[i] = k[i + 8];
            i += 1;
        }
        Key(u64::from_le_bytes(a), u64::from_le_bytes(b))
    }
}

/// Key for flow keys (client IPs, five-tuples) and for [`hash_bytes`].
pub const FLOW_KEY: Key = Key::from_ascii(b"l4lb.flow.key.v1");
/// Key for a backend name -> Maglev offset (first slot of its permutation).
pub const MAGLEV_OFFSET_KEY: Key = Key::from_ascii(b"l4lb.maglev.off1");
/// Key for a backend name -> Maglev skip (stride of its permutation). Independent of the offset
/// key, as the Maglev paper asks for two independent hash functions.
pub const MAGLEV_SKIP_KEY: Key = Key::from_ascii(b"l4lb.maglev.skp1");
/// Key for a backend name -> its rendezvous (highest-random-weight) seed.
pub const RENDEZVOUS_KEY: Key = Key::from_ascii(b"l4lb.rendezvous1");

/// SipHash-1-3 of `data` under `key`.
#[inline]
pub fn siphash13(key: Key, data: &[u8]) -> u64 {
    siphash::<1, 3>(key, data)
}

/// SipHash-2-4 (the reference variant). Not used for selection; kept so the tests can check
/// this implementation against the published reference vectors of the SipHash paper, which
/// exercises exactly the code SipHash-1-3 runs with other round counts.
#[inline]
pub fn siphash24(key: Key, data: &[u8]) -> u64 {
    siphash::<2, 4>(key, data)
}

/// SipHash-c-d as in the reference implementation: 8-byte little-endian words, the length in the
/// top byte of the last word, `c` rounds per word and `d` finalization rounds.
#[inline]
fn siphash<const C: usize, const D: usize>(key: Key, data: &[u8]) -> u64 {
    let mut v = [
        key.0 ^ 0x736f_6d65_7073_6575,
        key.1 ^ 0x646f_7261_6e64_6f6d,
        key.0 ^ 0x6c79_6765_6e65_7261,
        key.1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let m = u64::from_le_bytes(word);
        v[3] ^= m;
        for _ in 0..C {
            sip_round(&mut v);
        }
        v[0] ^= m;
    }
    // Only the low byte of the length counts (the reference does the same).
    let mut last = (data.len() as u64) << 56;
    for (i, &byte) in chunks.remainder().iter().enumerate() {
        last |= u64::from(byte) << (8 * i);
    }
    v[3] ^= last;
    for _ in 0..C {
        sip_round(&mut v);
    }
    v[0] ^= last;
    v[2] ^= 0xff;
    for _ in 0..D {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// The fixed hash of arbitrary bytes under [`FLOW_KEY`] (what the flow-key hashes are built
/// on).
#[inline]
pub fn hash_bytes(data: &[u8]) -> u64 {
    siphash13(FLOW_KEY, data)
}

/// Canonical form of an address for hashing: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
/// what a dual-stack socket reports for an IPv4 client) is its IPv4 address, so one client
/// hashes the same whichever socket it came through.
#[inline]
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Appends the address bytes (4 for IPv4, 16 for IPv6) at `buf[at..]`; returns the new end.
#[inline]
fn put_ip(buf: &mut [u8; 38], at: usize, ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            buf[at..at + 4].copy_from_slice(&v4.octets());
            at + 4
        }
        IpAddr::V6(v6) => {
            buf[at..at + 16].copy_from_slice(&v6.octets());
            at + 16
        }
    }
}

/// Key of `source_ip_hash`: SipHash-1-3 under [`FLOW_KEY`] of the client address bytes, 4 for
/// IPv4 (IPv4-mapped IPv6 included) and 16 for IPv6, in network order.
#[inline]
pub fn source_ip_hash(ip: IpAddr) -> u64 {
    match canonical(ip) {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// Key of `five_tuple_hash`: SipHash-1-3 under [`FLOW_KEY`] of
/// `protocol | family | src ip | src port | dst ip | dst port`, addresses as in
/// [`source_ip_hash`] (canonical, network order), ports big-endian. `family` has bit 0 set
/// when the source is IPv6 and bit 1 when the destination is, so the byte string is injective
/// even though its length varies.
#[inline]
pub fn five_tuple_hash(key: &FlowKey) -> u64 {
    let src = canonical(key.client.ip());
    let dst = canonical(key.local.ip());
    let family = u8::from(src.is_ipv6()) | (u8::from(dst.is_ipv6()) << 1);
    // 1 + 1 + 16 + 2 + 16 + 2 bytes at most: a stack buffer, no allocation per flow.
    let mut buf = [0u8; 38];
    buf[0] = key.protocol;
    buf[1] = family;
    let mut at = put_ip(&mut buf, 2, src);
    buf[at..at + 2].copy_from_slice(&key.client.port().to_be_bytes());
    at = put_ip(&mut buf, at + 2, dst);
    buf[at..at + 2].copy_from_slice(&key.local.port().to_be_bytes());
    hash_bytes(&buf[..at + 2])
}

/// Hash of a backend's name (its address as written in the config) under `key`: the name, not
/// the resolved address, so a table is a function of the config text alone.
#[inline]
pub fn name_hash(key: Key, name: &str) -> u64 {
    siphash13(key, name.as_bytes())
}

/// MurmurHash3's 64-bit finalizer (`fmix64`): a cheap bijective mix with full avalanche, used to
/// combine two already-hashed values (a flow or slot hash with a backend seed) without running
/// SipHash again on every (key, backend) pair.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    const REF_KEY: Key = Key(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);

    /// First and selected entries of the 64 reference vectors shipped with the SipHash paper's
    /// C implementation (`vectors.h`): key 00..0f, message 00..(i-1).
    #[test]
    fn siphash24_matches_reference_vectors() {
        let msg: Vec<u8> = (0u8..64).collect();
        let expected: [(usize, u64); 6] = [
            (0, 0x726f_db47_dd0e_0e31),
            (1, 0x74f8_39c5_93dc_67fd),
            (7, 0xab02_00f5_8b01_d137),
            (8, 0x93f5_f579_9a93_2462),
            (15, 0xa129_ca61_49be_45e5),
            (63, 0x958a_324c_eb06_4572),
        ];
        for (len, want) in expected {
            assert_eq!(siphash24(REF_KEY, &msg[..len]), want, "length {len}");
        }
    }

    /// std's (deprecated but stable) `SipHasher` is SipHash-2-4: a second, independent
    /// implementation for every length 0..64 and a non-trivial key.
    #[test]
    #[allow(deprecated)]
    fn siphash24_matches_std() {
        use std::hash::{Hasher, SipHasher};
        let msg: Vec<u8> = (0u8..64)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        let key = Key(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        for len in 0..msg.len() {
            let mut h = SipHasher::new_with_keys(key.0, key.1);
            h.write(&msg[..len]);
            assert_eq!(siphash24(key, &msg[..len]), h.finish(), "length {len}");
        }
    }

    /// Golden vectors of SipHash-1-3. Cross-checked when written against std's
    /// `DefaultHasher::new()` (SipHash-1-3 with zero keys today, but documented as unspecified,
    /// so not compared at test time) for every length 0..64; the empty-message value is also
    /// the commonly published SipHash-1-3 vector for a zero key.
    #[test]
    fn siphash13_golden() {
        let msg: Vec<u8> = (0u8..64).collect();
        assert_eq!(siphash13(Key(0, 0), b""), GOLDEN_13_ZERO_EMPTY);
        assert_eq!(siphash13(Key(0, 0), &msg[..15]), GOLDEN_13_ZERO_15);
        assert_eq!(siphash13(REF_KEY, &msg[..8]), GOLDEN_13_REF_8);
    }
    const GOLDEN_13_ZERO_EMPTY: u64 = 0xd1fb_a762_150c_532c;
    const GOLDEN_13_ZERO_15: u64 = 0xf30e_b725_bb91_c9ea;
    const GOLDEN_13_REF_8: u64 = 0x3690_9511_8d29_9a8e;

    #[test]
    fn keys_are_the_documented_ascii() {
        assert_eq!(FLOW_KEY.0.to_le_bytes(), *b"l4lb.flo");
        assert_eq!(FLOW_KEY.1.to_le_bytes(), *b"w.key.v1");
    }

    /// Pins the flow hashes: a change here re-maps every client of every deployment.
    #[test]
    fn flow_hash_golden() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(source_ip_hash(v4), GOLDEN_SRC_V4);
        assert_eq!(source_ip_hash(v6), GOLDEN_SRC_V6);
        let key = FlowKey {
            client: SocketAddr::new(v4, 40000),
            local: "198.51.100.7:443".parse().unwrap(),
            protocol: 6,
        };
        assert_eq!(five_tuple_hash(&key), GOLDEN_FIVE_V4);
        let key6 = FlowKey {
            client: SocketAddr::new(v6, 40000),
            local: "[2001:db8::2]:443".parse().unwrap(),
            protocol: 17,
        };
        assert_eq!(five_tuple_hash(&key6), GOLDEN_FIVE_V6);
        assert_eq!(
            name_hash(MAGLEV_OFFSET_KEY, "10.0.0.1:80"),
            GOLDEN_NAME_OFFSET
        );
        assert_eq!(hash_bytes(&[192, 0, 2, 1]), GOLDEN_SRC_V4);
    }
    const GOLDEN_SRC_V4: u64 = 0x2beb_4856_ea31_12bd;
    const GOLDEN_SRC_V6: u64 = 0xa359_b633_6b4b_9855;
    const GOLDEN_FIVE_V4: u64 = 0xa451_9ae1_0fc4_558c;
    const GOLDEN_FIVE_V6: u64 = 0x1927_e8dc_399c_44a6;
    const GOLDEN_NAME_OFFSET: u64 = 0x7963_a5bf_175f_0513;

    #[test]
    fn ipv4_mapped_hashes_like_ipv4() {
        let v4 = Ipv4Addr::new(203, 0, 113, 9);
        assert_eq!(
            source_ip_hash(IpAddr::V4(v4)),
            source_ip_hash(IpAddr::V6(v4.to_ipv6_mapped()))
        );
        let a = FlowKey {
            client: SocketAddr::new(IpAddr::V4(v4), 5000),
            local: "192.0.2.10:80".parse().unwrap(),
            protocol: 6,
        };
        let b = FlowKey {
            client: SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), 5000),
            local: SocketAddr::new(
                IpAddr::V6(Ipv4Addr::new(192, 0, 2, 10).to_ipv6_mapped()),
                80,
            ),
            protocol: 6,
        };
        assert_eq!(five_tuple_hash(&a), five_tuple_hash(&b));
    }

    #[test]
    fn five_tuple_depends_on_every_field() {
        let base = FlowKey {
            client: "192.0.2.1:1000".parse().unwrap(),
            local: "192.0.2.2:80".parse().unwrap(),
            protocol: 6,
        };
        let h = five_tuple_hash(&base);
        let mut k = base;
        k.protocol = 17;
        assert_ne!(five_tuple_hash(&k), h);
        let mut k = base;
        k.client.set_port(1001);
        assert_ne!(five_tuple_hash(&k), h);
        let mut k = base;
        k.local.set_port(81);
        assert_ne!(five_tuple_hash(&k), h);
        let mut k = base;
        k.client.set_ip("192.0.2.3".parse().unwrap());
        assert_ne!(five_tuple_hash(&k), h);
        let mut k = base;
        k.local.set_ip("192.0.2.4".parse().unwrap());
        assert_ne!(five_tuple_hash(&k), h);
    }
}
