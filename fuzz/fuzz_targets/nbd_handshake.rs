//! The NBD fixed-newstyle handshake (option haggling) as the server runs it,
//! fed arbitrary client bytes over an in-memory pipe.
//!
//! Input: one configuration byte (TLS mode, read-only, minimum block size),
//! then the client's bytes (client flags, options...).
//!
//! Invariants: no panic, no hang; the server's output is the greeting
//! followed only by well-framed option replies (and, after EXPORT_NAME, its
//! fixed-size reply); a handshake that enters transmission names one of
//! the exports.
#![no_main]

use envol::nbd::fuzzing::{self, Outcome, TlsState};
use envol::nbd::protocol as p;
use libfuzzer_sys::fuzz_target;

#[path = "support_nbd.rs"]
mod support;

fuzz_target!(|data: &[u8]| {
    let Some((&config, client)) = data.split_first() else {
        return;
    };
    let tls = match config & 3 {
        0 | 1 => TlsState::Unavailable,
        2 => TlsState::Offered {
            required: config & 4 != 0,
        },
        _ => TlsState::Active,
    };
    let minimum = if config & 8 != 0 { 512 } else { 1 };
    let exports = vec![
        support::export(
            "default",
            support::device(64 * 1024, minimum),
            false,
        ),
        support::export(
            "ro",
            support::device(4096, minimum),
            config & 16 != 0,
        ),
    ];
    let (result, out) = support::runtime().block_on(support::drive(client, |mut s| async move {
        fuzzing::handshake(&mut s, exports, tls).await
    }));
    let result = result.expect("the fuzz exports are valid");

    let mut rest = &out[..];
    if tls != TlsState::Active {
        assert!(rest.len() >= 18, "greeting missing");
        assert_eq!(&rest[..8], &p::NBDMAGIC.to_be_bytes());
        assert_eq!(&rest[8..16], &p::IHAVEOPT.to_be_bytes());
        rest = &rest[18..];
    }
    while rest.len() >= 8 && rest[..8] == p::OPTION_REPLY_MAGIC.to_be_bytes() {
        assert!(rest.len() >= 20, "truncated option reply header");
        let len = u32::from_be_bytes(rest[16..20].try_into().unwrap()) as usize;
        assert!(rest.len() >= 20 + len, "truncated option reply data");
        rest = &rest[20 + len..];
    }
    match &result {
        Ok(Outcome::Transmission { export, .. }) => {
            assert!(
                export == "default" || export == "ro",
                "unknown export {export:?}"
            );
            // GO ends with its ACK (nothing left); EXPORT_NAME with size,
            // flags and perhaps 124 zero bytes.
            assert!(
                matches!(rest.len(), 0 | 10 | 134),
                "{} stray bytes after the option replies",
                rest.len()
            );
        }
        _ => assert!(
            rest.is_empty(),
            "{} unframed bytes in the output",
            rest.len()
        ),
    }
});
