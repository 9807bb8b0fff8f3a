//! std::fs on Kiln's in-memory filesystem: directories, writes, reads, metadata, listing, rename, removal, and
//! errors as std reports them. Prints a summary and exits 0 when every result is right.

use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};

fn main() -> std::io::Result<()> {
    fs::create_dir_all("/tmp/app/logs")?;
    fs::write("/tmp/app/config.toml", "name = \"kiln\"\n")?;
    let config = fs::read_to_string("/tmp/app/config.toml")?;
    let mut log = fs::OpenOptions::new().create(true).append(true).open("/tmp/app/logs/app.log")?;
    for i in 0..100 {
        writeln!(log, "line {i}")?;
    }
    drop(log);
    let mut f = fs::File::open("/tmp/app/logs/app.log")?;
    f.seek(SeekFrom::Start(5))?;
    let mut rest = String::new();
    f.read_to_string(&mut rest)?;
    let meta = fs::metadata("/tmp/app/logs/app.log")?;
    fs::rename("/tmp/app/config.toml", "/tmp/app/settings.toml")?;
    let mut names: Vec<String> = fs::read_dir("/tmp/app")?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let missing = fs::read("/tmp/app/config.toml").unwrap_err().kind() == ErrorKind::NotFound;
    let not_empty = fs::remove_dir("/tmp/app").is_err();
    fs::remove_dir_all("/tmp/app")?;
    let gone = !std::path::Path::new("/tmp/app").exists();
    let ok = config == "name = \"kiln\"\n"
        && rest.starts_with("0\nline 1\n")
        && meta.len() == 790
        && meta.is_file()
        && names == ["logs", "settings.toml"]
        && missing
        && not_empty
        && gone;
    println!("fs: size={} names={names:?} missing={missing} removed={gone}", meta.len());
    std::process::exit(if ok { 0 } else { 1 });
}
