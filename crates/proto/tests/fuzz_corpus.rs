//! Replays every file of the `decoder` fuzz corpus through the fuzz target's own checks, so the
//! corpus (and the target's logic) cannot rot while nobody runs the fuzzer.
//!
//! Seed files named `ok-*`, `partial-*` or `err-<kind>*` also have their expected outcome checked;
//! files the fuzzer adds (named by hash) are only required not to panic.

#[path = "../../../fuzz/logic/decoder.rs"]
mod logic;

use std::fs;
use std::path::PathBuf;

use switchyard_proto::DecodeError;

fn corpus_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decoder");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.expect("corpus directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    let files = corpus_files();
    assert!(
        files.len() >= 12,
        "the seed corpus has {} files",
        files.len()
    );
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| logic::check(&data))
            .unwrap_or_else(|_| panic!("corpus file {name} panicked"));
        let error = outcome.error.map(|(err, _)| err);
        if name.starts_with("ok-") {
            assert_eq!(error, None, "{name}");
            assert!(!outcome.frames.is_empty(), "{name}");
            let wire: usize = outcome.frames.iter().map(|f| f.wire_len()).sum();
            assert_eq!(wire, data.len() - 1, "{name}: bytes left over");
        } else if name.starts_with("partial-") {
            assert_eq!(error, None, "{name}");
            assert!(outcome.frames.is_empty(), "{name}");
        } else if let Some(kind) = name.strip_prefix("err-") {
            let matches = match error {
                Some(DecodeError::UnsupportedVersion { .. }) => kind.starts_with("version"),
                Some(DecodeError::UnknownFrameType { .. }) => kind.starts_with("type"),
                Some(DecodeError::UndefinedFlags { .. }) => kind.starts_with("flags"),
                Some(DecodeError::PayloadTooLarge { max, .. }) => {
                    max == logic::MAX_PAYLOAD && kind.starts_with("too-large")
                }
                None => false,
            };
            assert!(matches, "{name}: got {error:?}");
        }
    }
}

#[test]
fn empty_input_is_fine() {
    let outcome = logic::check(&[]);
    assert!(outcome.frames.is_empty() && outcome.error.is_none());
}
