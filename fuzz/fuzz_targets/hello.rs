//! Any 8 bytes as a handshake hello: accepted hellos name a known role and
//! re-encode to the same first seven bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pfs_proto::conn::{decode_hello, encode_hello};

fuzz_target!(|data: &[u8]| {
    let Ok(bytes) = <[u8; 8]>::try_from(data) else {
        return;
    };
    if let Ok(role) = decode_hello(&bytes) {
        assert_eq!(encode_hello(role)[..7], bytes[..7]);
    }
});
