//! `Kiln.toml` as a user (or a project someone else wrote) gives it: any text, parsed as `kiln build` parses it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let _ = kiln_image::kiln_toml::parse(src, "Kiln.toml", std::path::PathBuf::from("/project"));
});
