//! A container image's layer (a tar stream, gzip-compressed or not, from an archive or a registry): applied to a
//! tree with its whiteouts and links, twice (a second layer over the first), then the program looked up as
//! `kiln build` does for the image's entrypoint.
#![no_main]

use kiln_container::layer::{apply, LayerReader, Totals};
use kiln_container::tree::Tree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|layer: &[u8]| {
    let mut tree = Tree::default();
    let mut totals = Totals::default();
    for hash in [false, true] {
        let Ok(mut reader) = LayerReader::new(layer, hash) else { return };
        if apply(&mut tree, &mut reader, &mut totals).is_err() {
            return;
        }
        let _ = reader.finish();
    }
    tree.walk(|path, node| {
        std::hint::black_box((path, node));
    });
    let _ = tree.file("/bin/sh");
    let _ = tree.resolve("/usr/bin/../lib/x", true);
});
