//! The security handshake as a responder sees it: whatever an outsider
//! sends first (preamble, then a length-prefixed Noise message). It must
//! refuse or accept without panicking, hanging or allocating without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    // Random bytes never hold the secret.
    assert!(!rt.block_on(p2pfs_proto::secure::fuzz_respond(data)));
});
