//! Replays the committed seed corpus of the `params` fuzz target through the
//! same hook the fuzzer calls, so every `cargo test` run exercises it.

use std::path::Path;

/// The corpus holds the guide's strings, the malformed table and examples of
/// other keys; fewer files than this means it went missing.
const MIN_SEEDS: usize = 100;

#[test]
fn replay_params_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/params");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("corpus file");
            cloudproxy_params::fuzzing::params(&data);
            count += 1;
        }
    }
    println!(
        "replayed {count} params corpus files from {}",
        dir.display()
    );
    assert!(
        count >= MIN_SEEDS,
        "only {count} corpus files in {}",
        dir.display()
    );
}
