//! Replays the committed seed corpora of the `frame`, `udp_header`, `ticket`
//! and `session` fuzz targets through the same hooks the fuzzer calls, so
//! every CI run exercises them on stable.

use std::fs;
use std::path::PathBuf;

fn replay(target: &str, hook: fn(&[u8]), min: usize) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for path in entries {
        let data = fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        hook(&data);
        n += 1;
    }
    println!("fuzz corpus {target}: {n} inputs replayed");
    assert!(
        n >= min,
        "corpus {target} has {n} inputs, expected at least {min}"
    );
}

#[test]
fn frame_corpus() {
    replay("frame", cloudproxy_proto::fuzzing::frame, 40);
}

#[test]
fn udp_header_corpus() {
    replay("udp_header", cloudproxy_proto::fuzzing::udp_header, 6);
}

#[test]
fn ticket_corpus() {
    replay("ticket", cloudproxy_proto::fuzzing::ticket, 4);
}

#[test]
fn session_corpus() {
    replay("session", cloudproxy_proto::fuzzing::session, 6);
}
