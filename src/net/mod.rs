//! Sockets and kernel plumbing: REUSEPORT listeners (TCP and UDP), sockets inherited from
//! a takeover or systemd, splice pipes, recvmmsg/sendmmsg batches, backend-side sockets
//! (source addresses, local shortages), and the classification of I/O errors into what the
//! event loop does about them.

pub mod connect;
pub mod inherit;
pub mod io;
pub mod listener;
pub mod pipe;
pub mod udp;
pub mod uring;
