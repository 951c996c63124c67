//! UniFFI's binding generator, built from this workspace so its version is
//! the library's (`cargo run -p cloudproxy-ffi --features generate --bin
//! uniffi-bindgen -- generate --library <lib> --language kotlin ...`).

fn main() {
    uniffi::uniffi_bindgen_main();
}
