//! Fuzz target: the routing core, driven by arbitrary operation sequences.
//!
//! The bytes are read as operations on one `Router` with a fake clock (see `logic/router.rs`,
//! which `tests/router_fuzz.rs` in the main crate also runs, over the committed corpus and a
//! proptest): invariants after every step, valid frames only, no frame across channels, and
//! nothing left once everyone has gone and every timer has fired.
//!
//! Run with `cargo +nightly fuzz run router` from this directory.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../logic/router.rs"]
mod logic;

fuzz_target!(|data: &[u8]| {
    logic::run(data);
});
