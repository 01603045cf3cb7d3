//! Backend selection. PLACEHOLDER: being written.
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    LeastConn,
    WeightedLeastConn,
    RandomTwo,
    SourceIpHash,
    FiveTupleHash,
}

/// What hash-based algorithms hash. `protocol` is the IP protocol number (6 TCP, 17 UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub protocol: u8,
}
