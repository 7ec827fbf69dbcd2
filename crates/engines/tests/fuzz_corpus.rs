//! Replays the milter fuzz corpus (`fuzz/corpus/milter/`) through the fuzz target's body, so
//! each corpus file is a regression test under plain `cargo test`.

use std::path::Path;

#[test]
fn milter_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/milter");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "corpus too small: {}", files.len());
    for file in files {
        let data = std::fs::read(&file).expect("read corpus file");
        let result = std::panic::catch_unwind(|| attitude_engines::milter::fuzzing::replies(&data));
        assert!(result.is_ok(), "corpus file {} fails", file.display());
    }
}
