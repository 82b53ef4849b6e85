//! Fuzz target: the streaming decoder and the control-payload decoders.
//!
//! The first input byte chooses how the rest is split into reads (see `logic/decoder.rs`, which
//! `tests/fuzz_corpus.rs` in the main crate also runs over the committed corpus).
//!
//! Run with `cargo +nightly fuzz run decoder` from this directory.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../logic/decoder.rs"]
mod logic;

fuzz_target!(|data: &[u8]| {
    let _ = logic::check(data);
});
