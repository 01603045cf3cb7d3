//! `--sources`: the client source IPs, handed out round-robin, one per new socket.
//!
//! Control path builds the list once; each worker then picks without sharing anything: worker
//! `i` of `n` takes addresses `i, i + n, i + 2n, ...`, so the union over workers is a global
//! round-robin and no atomic is touched per connection.
//! Invariant: the list is non-empty, of one address family, and at most `MAX_SOURCES` long.

use std::net::IpAddr;
use std::sync::Arc;

/// Upper bound on expanded source addresses: 65,536 (a /16 of IPv4, a /112 of IPv6). More
/// addresses than that buy nothing (each gives ~28k ephemeral ports) and would cost memory.
pub const MAX_SOURCES: u128 = 65_536;

#[derive(Debug, Clone)]
pub struct Sources {
    addrs: Arc<[IpAddr]>,
}

impl Sources {
    /// Parses `A`, `A-B` (inclusive range) or a comma-separated list of those.
    pub fn parse(s: &str) -> Result<Sources, String> {
        let mut addrs: Vec<IpAddr> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (parse_ip(a)?, parse_ip(b)?),
                None => {
                    let a = parse_ip(item)?;
                    (a, a)
                }
            };
            match (lo, hi) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    let (a, b) = (u32::from(a), u32::from(b));
                    check_range(item, a as u128, b as u128, addrs.len())?;
                    addrs.extend((a..=b).map(|v| IpAddr::V4(v.into())));
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    let (a, b) = (u128::from(a), u128::from(b));
                    check_range(item, a, b, addrs.len())?;
                    addrs.extend((a..=b).map(|v| IpAddr::V6(v.into())));
                }
                _ => return Err(format!("{item}: range mixes IPv4 and IPv6")),
            }
        }
        let Some(first) = addrs.first() else {
            return Err(format!("{s}: no source address"));
        };
        let v4 = first.is_ipv4();
        if addrs.iter().any(|a| a.is_ipv4() != v4) {
            return Err(format!("{s}: mixes IPv4 and IPv6 addresses"));
        }
        Ok(Sources {
            addrs: addrs.into(),
        })
    }

    pub fn is_ipv4(&self) -> bool {
        self.addrs.first().is_some_and(|a| a.is_ipv4())
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Every address, in the order given.
    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }

    /// The picker for worker `index` of `workers`.
    pub fn picker(&self, index: usize, workers: usize) -> Picker {
        Picker {
            addrs: Some(self.addrs.clone()),
            next: index,
            step: workers.max(1),
        }
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s}: not an IP address"))
}

fn check_range(item: &str, lo: u128, hi: u128, have: usize) -> Result<(), String> {
    if lo > hi {
        return Err(format!("{item}: range end is below its start"));
    }
    if hi - lo + 1 + have as u128 > MAX_SOURCES {
        return Err(format!("{item}: more than {MAX_SOURCES} source addresses"));
    }
    Ok(())
}

/// One worker's view: yields its share of the round-robin; `None` when no --sources.
#[derive(Debug, Clone)]
pub struct Picker {
    addrs: Option<Arc<[IpAddr]>>,
    next: usize,
    step: usize,
}

impl Picker {
    /// No --sources: every socket lets the kernel choose.
    pub fn none() -> Picker {
        Picker {
            addrs: None,
            next: 0,
            step: 1,
        }
    }

    pub fn from_opt(src: Option<&Sources>, index: usize, workers: usize) -> Picker {
        src.map_or_else(Picker::none, |s| s.picker(index, workers))
    }

    pub fn next_source(&mut self) -> Option<IpAddr> {
        let addrs = self.addrs.as_ref()?;
        let a = addrs[self.next % addrs.len()];
        self.next = self.next.wrapping_add(self.step);
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_and_list() {
        let s = Sources::parse("127.0.0.1-127.0.0.4,127.0.0.9").unwrap();
        assert_eq!(s.len(), 5);
        assert!(s.is_ipv4());
        let mut p0 = s.picker(0, 2);
        let mut p1 = s.picker(1, 2);
        let got: Vec<_> = (0..3)
            .flat_map(|_| [p0.next_source().unwrap(), p1.next_source().unwrap()])
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "127.0.0.1",
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4",
                "127.0.0.9",
                "127.0.0.1"
            ]
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Sources::parse("").is_err());
        assert!(Sources::parse("127.0.0.5-127.0.0.1").is_err());
        assert!(Sources::parse("127.0.0.1-::1").is_err());
        assert!(Sources::parse("10.0.0.0-10.2.0.0").is_err());
        assert!(Sources::parse("nope").is_err());
        assert!(Sources::parse("::1,::2").is_ok());
    }
}
