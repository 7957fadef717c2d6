//! Helpers for the p2pfs benchmark suite (`bench/run.py`).
//!
//! The crate's binaries are references the harness runs beside the real
//! `p2pfs` daemons:
//!
//! - `tcpcopy`: a plain TCP sender/receiver, the "raw TCP copy into a file"
//!   reference for single-source fetch throughput.
//!
//! A tracker load generator (`trackerload`, on `p2pfs-proto`) belongs here
//! too; it is not written yet (see BENCHMARKS.md).
