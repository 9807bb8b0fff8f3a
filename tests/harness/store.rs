//! A store of its own for each test that makes images, instances or volumes, so that no two tests meet.

use super::{kiln, Kiln};
use std::path::{Path, PathBuf};

/// `kiln` with `home` as its store (`$KILN_HOME`).
pub fn kiln_in(home: &Path) -> Kiln {
    kiln().env("KILN_HOME", home)
}

/// A fresh, empty directory `AREA/TEST` under the target directory, for one test's files or store.
pub fn scratch(area: &str, test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(area).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
