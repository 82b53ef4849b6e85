//! The `router` fuzz target's checks (`fuzz/logic/router.rs`) in CI: a bounded proptest over
//! arbitrary operation sequences, and a replay of the committed corpus (`fuzz/corpus/router/`),
//! so neither the corpus nor the target's logic can rot while nobody runs the fuzzer.

#[path = "../../../fuzz/logic/router.rs"]
mod logic;

use std::fs;
use std::path::PathBuf;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn router_survives_any_operation_sequence(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        logic::run(&data);
    }
}

#[test]
fn router_fuzz_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/router");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.expect("corpus directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the router corpus is empty");
    for path in files {
        let data = fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        std::panic::catch_unwind(|| logic::run(&data))
            .unwrap_or_else(|_| panic!("corpus file {name} panicked"));
    }
}

#[test]
fn empty_input_leaves_nothing_behind() {
    logic::run(&[]);
}
