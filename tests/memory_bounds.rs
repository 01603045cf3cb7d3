//! The fixed per-connection and per-session memory of l4lb's own structures, as stated in
//! docs/operations.md ("Security", memory): `cargo test --test memory_bounds -- --nocapture`
//! prints them; the assertions keep the documented bounds true as the structs change.

use l4lb::access_queue::{LINE_MAX, QUEUE_LINES};
use l4lb::net::pipe::PIPE_CAPACITY;
use l4lb::worker::conn::Conn;
use l4lb::worker::udp::session::Session;
use l4lb::worker::COPY_BUFFER;

/// The bounds docs/operations.md states.
const CONN_STRUCT_MAX: usize = 512;
const SESSION_STRUCT_MAX: usize = 256;

#[test]
fn per_connection_and_session_structs_stay_small() {
    let conn = std::mem::size_of::<Conn>();
    let session = std::mem::size_of::<Session<mio::net::UdpSocket>>();
    println!("size_of::<Conn>() = {conn} bytes (slab slot; bound {CONN_STRUCT_MAX})");
    println!("size_of::<Session<UdpSocket>>() = {session} bytes (bound {SESSION_STRUCT_MAX})");
    println!("copy buffer = {COPY_BUFFER} bytes per direction; pipe = {PIPE_CAPACITY} bytes");
    println!("access-log queue = {QUEUE_LINES} x {LINE_MAX} bytes");
    assert!(conn <= CONN_STRUCT_MAX, "Conn is {conn} bytes");
    assert!(session <= SESSION_STRUCT_MAX, "Session is {session} bytes");
}
