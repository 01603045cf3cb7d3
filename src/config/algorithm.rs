//! The balancing algorithms a listener (or an SNI route) may name in `balance`: their config
//! spelling, which is also how `/status` and the logs name them. Config owns the names;
//! `balancer` implements them (and re-exports this type), so config depends on nothing above
//! it.
//!
//! Control path: parsed once per config load; `Algorithm` is `Copy` and compared on the hot
//! path only as a value.

use std::fmt;

/// A listener's balancing algorithm (`balance` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConn,
    WeightedLeastConn,
    RandomTwo,
    LeastLatency,
    SourceIpHash,
    FiveTupleHash,
}

impl Algorithm {
    /// Every algorithm, in the order the spec lists them.
    pub const ALL: [Algorithm; 8] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConn,
        Algorithm::WeightedLeastConn,
        Algorithm::RandomTwo,
        Algorithm::LeastLatency,
        Algorithm::SourceIpHash,
        Algorithm::FiveTupleHash,
    ];

    /// The config spelling (`balance = "..."`), also used in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastConn => "least_conn",
            Algorithm::WeightedLeastConn => "weighted_least_conn",
            Algorithm::RandomTwo => "random_two",
            Algorithm::LeastLatency => "least_latency",
            Algorithm::SourceIpHash => "source_ip_hash",
            Algorithm::FiveTupleHash => "five_tuple_hash",
        }
    }

    /// Parses the config spelling; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether the algorithm maps a flow key through a Maglev table (and so needs one built).
    pub fn is_hash(self) -> bool {
        matches!(self, Algorithm::SourceIpHash | Algorithm::FiveTupleHash)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
