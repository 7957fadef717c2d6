//! Helpers for the p2pfs benchmark suite (`bench/run.py`).
//!
//! The crate's binaries are references the harness runs beside the real
//! `p2pfs` daemons:
//!
//! - `tcpcopy`: a plain TCP sender/receiver, the "raw TCP copy into a file"
//!   reference for single-source fetch throughput.
//! - `trackerload`: a tracker load generator speaking the real protocol
//!   (benchmark 6): many peers and files, then many connections timing
//!   file-location and chunk-register requests.
