//! Fuzz the TLS ClientHello parser of SNI routing (`l4lb::tls_sni::parse`), which reads bytes
//! from any client on the internet: it must never panic, must decide (anything but
//! `Incomplete`) once `MAX_HELLO + 5` bytes are in (the bound a worker buffers), and what it
//! accepts must be consistent (a length within the input, a lower-case ASCII name).
#![no_main]

use l4lb::tls_sni::{parse, ParseError, MAX_HELLO, MAX_NAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let result = parse(data);
    if data.len() >= MAX_HELLO + 5 {
        assert_ne!(result, Err(ParseError::Incomplete));
    }
    if let Ok(hello) = result {
        assert!(hello.len <= data.len());
        if let Some(name) = hello.server_name {
            let b = name.as_bytes();
            assert!(!b.is_empty() && b.len() <= MAX_NAME);
            assert!(b.iter().all(|c| !c.is_ascii_uppercase() && c.is_ascii_graphic()));
        }
        // Every prefix of an accepted hello is undecided or refused as too large, never Ok
        // with a different length.
        if let Ok(again) = parse(&data[..hello.len]) {
            assert_eq!(again, hello);
        }
    }
});
