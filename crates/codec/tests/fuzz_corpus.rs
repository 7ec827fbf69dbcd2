//! Replays the fuzz corpora (`fuzz/corpus/decode/`, `fuzz/corpus/reply/`) through the fuzz
//! targets' bodies, so each corpus file is a regression test under plain `cargo test`.

use std::path::Path;

fn replay(corpus: &str, min: usize, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(corpus);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= min, "corpus too small: {}", files.len());
    for file in files {
        let data = std::fs::read(&file).expect("read corpus file");
        let result = std::panic::catch_unwind(|| body(&data));
        assert!(result.is_ok(), "corpus file {} fails", file.display());
    }
}

#[test]
fn fuzz_corpus_replays_cleanly() {
    replay("decode", 10, attitude_codec::fuzzing::decode_all);
}

#[test]
fn reply_corpus_replays_cleanly() {
    replay("reply", 5, attitude_codec::fuzzing::replies_all);
}
