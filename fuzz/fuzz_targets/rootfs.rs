//! The root file system format (`kiln_abi::rootfs`, read by the library OS and by `kiln` when it adds an image's
//! files to another): any bytes as an image, parsed entry by entry, then added to a builder as `kiln run IMAGE
//! --file` does; what the builder makes must parse again, with the same entries.
#![no_main]

use kiln_abi::rootfs;
use kiln_vmm::rootfs::RootfsBuilder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|image: &[u8]| {
    let _ = (rootfs::index_end(image), rootfs::is_empty(image));
    let Ok(entries) = rootfs::entries(image) else { return };
    let mut good = Vec::new();
    for entry in entries.take(10_000) {
        let Ok(entry) = entry else { break };
        let data = image.get(entry.data_offset..entry.data_offset + entry.data_len).expect("checked data");
        good.push((entry.kind, entry.path, data));
    }
    let mut builder = RootfsBuilder::reproducible();
    if builder.add_image(image).is_err() {
        return;
    }
    let built = builder.finish();
    let again: Vec<_> = rootfs::entries(&built)
        .expect("a built image")
        .map(|e| e.map(|e| (e.kind, e.path, &built[e.data_offset..e.data_offset + e.data_len])))
        .collect::<Result<_, _>>()
        .expect("every entry of a built image parses");
    if good.len() < 10_000 {
        assert_eq!(again, good);
    }
});
