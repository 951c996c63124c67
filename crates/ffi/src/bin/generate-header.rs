//! Writes the C header `include/cloudproxy.h` from `src/c_api.rs` with
//! cbindgen (`cargo run -p cloudproxy-ffi --features generate --bin
//! generate-header -- [OUT]`; default: the crate's `include/cloudproxy.h`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::args_os()
        .nth(1)
        .map_or_else(|| crate_dir.join("include/cloudproxy.h"), PathBuf::from);
    let config = match cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("generate-header: reading cbindgen.toml: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cbindgen::generate_with_config(&crate_dir, config) {
        Ok(bindings) => {
            bindings.write_to_file(&out);
            println!("generate-header: wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("generate-header: {e}");
            ExitCode::FAILURE
        }
    }
}
