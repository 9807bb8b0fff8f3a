//! Where a crash's core file goes: the crashed vCPU's thread writes it into a file opened before the VM ran, unnamed
//! (O_TMPFILE) in the folder it belongs in, which is named after the run. The vCPU threads' seccomp lists have no
//! file creation, and a jail's empty root has none of the user's folders: a jailed VM's core is named by the jail's
//! parent, outside it. For `kiln run --core FILE` and `kiln restore --core FILE` (FILE's folder) and a detached
//! instance (its own folder, `core`).

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct UnnamedCore {
    path: PathBuf,
    file: File,
}

impl UnnamedCore {
    /// An unnamed file in the folder of `path` (absolute), to be named `path`; an error where that folder's file
    /// system has no O_TMPFILE.
    pub fn open(path: &Path) -> std::io::Result<UnnamedCore> {
        let dir = path.parent().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let file = File::options().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir)?;
        Ok(UnnamedCore { path: path.to_path_buf(), file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the VM its descriptor of the file, for a crash to write into.
    pub fn hand_to(&self, vm: &mut kiln_vmm::Vm) -> Result<()> {
        let file = self.file.try_clone().context("cannot share the core file with the VM")?;
        if !vm.core_into(file) {
            bail!("the VM did not take its core file (a bug in kiln)");
        }
        Ok(())
    }

    /// Names the file (replacing an older one of its name): a crash wrote the core into it.
    pub fn name(&self) -> Result<()> {
        kiln_image::instance::name_unnamed(&self.file, &self.path)
            .with_context(|| format!("cannot name {}", self.path.display()))
    }

    /// Names the file if a core was written into it (it is not empty); whether one was. For a jail's parent, which
    /// hears of the crash only as an exit status.
    pub fn name_if_written(&self) -> Result<bool> {
        let len = self.file.metadata().with_context(|| format!("cannot read {}", self.path.display()))?.len();
        if len == 0 {
            return Ok(false);
        }
        self.name()?;
        Ok(true)
    }
}
