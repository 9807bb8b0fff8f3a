//! `kiln snapshot INSTANCE FILE` and `kiln restore FILE`: a running instance written to a file (its RAM, only the
//! pages it touched; its vCPUs; its network card) and made to run on from there, in another process, later. See
//! `docs/snapshots.md`.

use crate::control::{self, Answer, SnapshotRequest};
use crate::detach;
use anyhow::{anyhow, bail, Context, Result};
use kiln_image::instance::{Instances, State};
use kiln_launch::{home, LaunchSpec};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct SnapshotArgs {
    /// Let the instance run on after the snapshot (by default it ends once the snapshot is written, as a serverless
    /// platform scales to zero; its published ports are then free for the restore)
    #[arg(long)]
    leave_running: bool,
    /// The instance: name or id
    instance: String,
    /// The file to write (replaced if it exists)
    file: PathBuf,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// Run the restored instance in the background and print its id
    #[arg(short, long)]
    detach: bool,
    /// Name the restored instance (with -d)
    #[arg(long, requires = "detach")]
    name: Option<String>,
    /// Remove the instance's record when it ends (with -d)
    #[arg(long, requires = "detach")]
    rm: bool,
    /// On a crash, write an ELF core file here (`gdb PROGRAM FILE` opens it); with -d, the instance's folder has it
    #[arg(long, value_name = "FILE", value_parser = crate::run::parse_core_file)]
    core: Option<PathBuf>,
    /// A file `kiln snapshot` wrote
    file: PathBuf,
}

/// How long `kiln snapshot` waits for an instance it ended to be gone.
const END_WAIT: Duration = Duration::from_secs(10);

pub fn snapshot(args: SnapshotArgs) -> Result<u8> {
    let store = home::store()?;
    let instances = Instances::new(&store);
    let instance = instances.find(&args.instance)?;
    let path = std::path::absolute(&args.file)
        .with_context(|| format!("{}: cannot make the path absolute", args.file.display()))?;
    // kilnd's instances are paused and written by kilnd (its API), which also ends them for good.
    if instance.kilnd {
        let written = crate::kilnd_client::snapshot(&instance, &path, args.leave_running)?;
        outln!(
            "{}: {} KiB of memory written ({} MiB of RAM)",
            path.display(),
            written.memory_bytes >> 10,
            written.file_len >> 20
        );
        return Ok(0);
    }
    if instance.state != State::Running || !instance.vmm_alive() {
        bail!("instance {} is not running", instance.name);
    }
    let socket = detach::control_path(&instances, &instance.id);
    let request = SnapshotRequest { path: path.clone(), keep_running: args.leave_running };
    match control::snapshot(&socket, &request)? {
        Answer::Written { memory_bytes, file_len } => {
            outln!("{}: {} KiB of memory written ({} MiB of RAM)", path.display(), memory_bytes >> 10, file_len >> 20);
        }
        Answer::Failed(why) => bail!("instance {}: {why}", instance.name),
    }
    if !args.leave_running {
        let deadline = Instant::now() + END_WAIT;
        while instance.vmm_alive() {
            if Instant::now() >= deadline {
                bail!(
                    "instance {} was snapshotted but its process did not end within {} s",
                    instance.name,
                    END_WAIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(0)
}

pub fn restore(args: RestoreArgs) -> Result<u8> {
    // Before any file is opened: the instance process takes its starter's pipe by number.
    let mut instance = detach::instance_of_this_process(args.detach)?;
    // With kilnd answering, a detached restore runs on kilnd's threads, as kiln run -d does.
    if args.detach && instance.is_none() {
        if let Some(client) = crate::kilnd_client::answering() {
            return crate::kilnd_client::restore(&client, &args.file, args.name.clone(), args.rm);
        }
    }
    let opened = kiln_vmm::snapshot::Opened::open(&args.file).map_err(|e| anyhow!(kiln_launch::chain(&e)))?;
    let mut spec: LaunchSpec = serde_json::from_value(opened.launch().clone()).map_err(|_| {
        anyhow!(
            "{}: the snapshot does not say how to launch its instance (not written by kiln snapshot)",
            args.file.display()
        )
    })?;
    // The snapshot's own is where the snapshotted instance's core would have gone.
    spec.core_file = args.core.clone();
    if args.detach && instance.is_none() {
        let target = args.file.display().to_string();
        let how = detach::Detach { name: args.name.as_deref(), rm: args.rm, target: &target };
        return detach::start(&how, &spec);
    }
    kiln_seccomp::set_confine_caller(true);
    let unnamed_core = crate::run::unnamed_core(&mut spec, instance.as_ref(), false);
    let mut vm = kiln_launch::restore(&spec, opened)?;
    crate::run::give_core(&mut vm, &spec, unnamed_core.as_ref())?;
    crate::run::run_vm(&spec, vm, None, (instance.as_mut(), unnamed_core), None)
}
