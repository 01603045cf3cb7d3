//! Sockets and kernel plumbing: REUSEPORT listeners, splice pipes, and the classification of
//! I/O errors into what the event loop does about them.

pub mod io;
pub mod listener;
pub mod pipe;
