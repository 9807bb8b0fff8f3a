//! The EFI system partition: a FAT file system (`fatfs`; FAT12 or FAT16, as its size calls for, which UEFI
//! firmware reads as it reads FAT32) holding the given files, sized to them.

use std::io::{Cursor, Write as _};

const MIB: usize = 1 << 20;

/// A partition image holding `files` (paths with `/`, directories made as needed), in whole MiB.
pub fn build(files: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    let content: usize = files.iter().map(|(_, bytes)| bytes.len()).sum();
    // Room for the FATs, directories and each file's last cluster, generously.
    let size = (content + content / 8 + 256 * 1024).next_multiple_of(MIB);
    let mut image = vec![0u8; size];
    let options = fatfs::FormatVolumeOptions::new().volume_label(*b"KILN       ");
    fatfs::format_volume(Cursor::new(&mut image[..]), options)?;
    {
        let fs = fatfs::FileSystem::new(Cursor::new(&mut image[..]), fatfs::FsOptions::new())?;
        for (path, bytes) in files {
            let root = fs.root_dir();
            let (dirs, name) = path.rsplit_once('/').unwrap_or(("", path));
            let mut dir = root.clone();
            for part in dirs.split('/').filter(|p| !p.is_empty()) {
                dir = dir.create_dir(part)?;
            }
            let mut file = dir.create_file(name)?;
            file.truncate()?;
            file.write_all(bytes)?;
            file.flush()?;
        }
        fs.unmount()?;
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn files_read_back_from_the_partition() {
        let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let image = build(&[("EFI/BOOT/BOOTX64.EFI", b"MZ loader"), ("kiln/app.elf", &big), ("kiln/cmdline", b"")])
            .expect("build");
        assert_eq!(image.len() % MIB, 0);
        assert!(image.len() <= 2 * MIB, "{} bytes", image.len());
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).expect("mount");
        let read = |path: &str| {
            let mut out = Vec::new();
            fs.root_dir().open_file(path).expect(path).read_to_end(&mut out).expect("read");
            out
        };
        assert_eq!(read("EFI/BOOT/BOOTX64.EFI"), b"MZ loader");
        assert_eq!(read("kiln/app.elf"), big);
        assert!(read("kiln/cmdline").is_empty());
    }
}
