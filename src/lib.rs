//! l4lb: a Layer-4 (TCP and UDP) load balancer for Linux.
//!
//! ```text
//!             main thread (control path)
//!   CLI -> config::load -> runtime::run: bind, spawn, wait for signals
//!                 |
//!     +-----------+-----------+  (one per CPU, pinned; share nothing on the data path)
//!     v           v           v
//!  worker 0    worker 1 ... worker N-1
//!  mio Poll    mio Poll     mio Poll
//!  REUSEPORT   REUSEPORT    REUSEPORT    <- one listening socket per listener per worker
//!  slab<Conn>  slab<Conn>   slab<Conn>
//!     \           |           /
//!      \          |          /   read without locks
//!   backend::Pool (ArcSwap snapshot) + per-backend atomics, limits::ClientTable (atomics)
//! ```
//!
//! A connection's path: accept (worker) -> ACL and limits -> balancer pick ->
//! non-blocking connect (retry on refusal/timeout) -> forward (splice or copy) -> close.
//! See docs/architecture.md.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

pub mod access_queue;
pub mod admin;
pub mod backend;
pub mod balancer;
pub mod clock;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod proxy_protocol;
pub mod runtime;
pub mod state;
pub mod tls_sni;
pub mod worker;
