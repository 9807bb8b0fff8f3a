//! `kiln ps`, `kiln logs`, `kiln stop`, `kiln kill`, `kiln rm`: the instances `kiln run -d` started.

use crate::output::{duration, print_table, Format};
use anyhow::{bail, Context, Result};
use kiln_image::instance::{now, tail_start, Instance, Instances, State};
use kiln_launch::home;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct PsArgs {
    /// Show exited instances too
    #[arg(short, long)]
    all: bool,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    format: Format,
}

fn status(i: &Instance) -> String {
    let t = now();
    match i.state {
        State::Created => "created".into(),
        State::Restarting => format!("restarting ({})", i.restarts),
        State::Running => {
            let mut running = format!("running for {}", duration(t.saturating_sub(i.started_ms.unwrap_or(t)) / 1000));
            if i.kept {
                running += " (kept: waiting for kilnd to start)";
            }
            match i.health {
                Some(health) => format!("{running} ({health})"),
                None => running,
            }
        }
        State::Exited => {
            let code = i.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "?".into());
            let ago = duration(t.saturating_sub(i.finished_ms.unwrap_or(t)) / 1000);
            let reason = i.reason.as_deref().unwrap_or("exited");
            format!("exited ({code}) {ago} ago: {reason}")
        }
    }
}

pub fn ps(args: PsArgs) -> Result<u8> {
    let shown: Vec<Instance> = match crate::kilnd_client::answering() {
        Some(daemon) => crate::kilnd_client::list(&daemon, args.all)?,
        None => {
            let store = home::store()?;
            let instances = Instances::new(&store);
            for damaged in instances.damaged()? {
                errln!("kiln: {}", crate::chain(&damaged.into()));
            }
            instances.list()?.into_iter().filter(|i| args.all || i.state != State::Exited).collect()
        }
    };
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&shown)?),
        Format::Table => {
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|i| vec![i.id.clone(), i.name.clone(), i.image.clone(), i.ports.join(","), status(i)])
                .collect();
            print_table(&["ID", "NAME", "IMAGE", "PORTS", "STATUS"], &rows);
        }
    }
    Ok(0)
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// Keep printing new output until the instance ends
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<usize>,
    /// The instance: name or id
    instance: String,
}

pub fn logs(args: LogsArgs) -> Result<u8> {
    match print_logs(args) {
        // `kiln logs web | head`: the reader has all it wanted.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            Ok(0)
        }
        other => other,
    }
}

fn print_logs(args: LogsArgs) -> Result<u8> {
    if let Some(daemon) = crate::kilnd_client::answering() {
        return crate::kilnd_client::logs(&daemon, &args.instance, args.tail, args.follow);
    }
    let store = home::store()?;
    let instances = Instances::new(&store);
    let instance = instances.find(&args.instance)?;
    let path = instances.log_path(&instance.id);
    let mut file = std::fs::File::open(&path).with_context(|| format!("the log of {}", instance.name))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let start = args.tail.map_or(0, |n| tail_start(&bytes, n));
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes[start..])?;
    out.flush()?;
    if !args.follow {
        return Ok(0);
    }
    let mut at = bytes.len() as u64;
    loop {
        let ended = match instances.load(&instance.id) {
            Ok(i) => instances.observe(i)?.state == State::Exited,
            Err(_) => true,
        };
        file.seek(SeekFrom::Start(at))?;
        let mut more = Vec::new();
        file.read_to_end(&mut more)?;
        at += more.len() as u64;
        out.write_all(&more)?;
        out.flush()?;
        if ended {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before killing the VM
    #[arg(short = 't', long = "time", value_name = "SECS", default_value_t = 10)]
    time: u64,
    /// Instances: names or ids
    #[arg(required = true, value_name = "INSTANCE")]
    instances: Vec<String>,
}

/// Waits up to `limit` for the instance's VMM process to end (forever, for a limit past the end of time).
fn wait_for_end(instance: &Instance, limit: Duration) -> bool {
    let deadline = Instant::now().checked_add(limit);
    while instance.vmm_alive() {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn signal(instance: &Instance, sig: i32) -> Result<()> {
    let pid = instance.pid.context("the instance has no process")?;
    // 0 and negative pids name process groups, or every process (-1): never what a record means.
    let pid = i32::try_from(pid)
        .ok()
        .filter(|&pid| pid > 0)
        .with_context(|| format!("instance {} records pid {pid}, which is no process", instance.name))?;
    // SAFETY: kill(2) with a pid whose start time was checked just before (vmm_alive), so it is the instance's VMM.
    if unsafe { libc::kill(pid, sig) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e).with_context(|| format!("cannot signal instance {}", instance.name));
        }
    }
    Ok(())
}

/// Whether the instance runs, or is starting: its process is there (a record whose process is gone was marked
/// exited when it was read).
fn has_live_process(instance: &Instance) -> bool {
    instance.state != State::Exited && instance.vmm_alive()
}

/// SIGKILLs the VMM and records why, since it cannot.
fn kill_and_record(instances: &Instances<'_>, instance: &Instance, reason: String) -> Result<()> {
    if instance.vmm_alive() {
        signal(instance, libc::SIGKILL)?;
    }
    if !wait_for_end(instance, Duration::from_secs(10)) {
        bail!("instance {} did not die of SIGKILL within 10 s", instance.name);
    }
    let result = instances.update(&instance.id, |i| {
        if i.state != State::Exited {
            i.state = State::Exited;
            (i.exit_code, i.reason, i.finished_ms) = (Some(128 + libc::SIGKILL), Some(reason), Some(now()));
        }
    });
    match result {
        Ok(record) if record.auto_remove => Ok(instances.remove(&record.id)?),
        Ok(_) | Err(kiln_image::instance::InstanceError::NoSuch(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn stop(args: StopArgs) -> Result<u8> {
    let store = home::store()?;
    let instances = Instances::new(&store);
    for what in &args.instances {
        let instance = instances.find(what)?;
        if instance.kilnd {
            crate::kilnd_client::stop(&instance, args.time)?;
        } else if has_live_process(&instance) {
            signal(&instance, libc::SIGTERM)?;
            if !wait_for_end(&instance, Duration::from_secs(args.time)) {
                let why = format!("killed by kiln stop: still running {} s after SIGTERM", args.time);
                kill_and_record(&instances, &instance, why)?;
            }
        }
        outln!("{}", instance.name);
    }
    Ok(0)
}

#[derive(clap::Args)]
pub struct KillArgs {
    /// Instances: names or ids
    #[arg(required = true, value_name = "INSTANCE")]
    instances: Vec<String>,
}

pub fn kill(args: KillArgs) -> Result<u8> {
    let store = home::store()?;
    let instances = Instances::new(&store);
    for what in &args.instances {
        let instance = instances.find(what)?;
        if instance.kilnd {
            crate::kilnd_client::kill(&instance)?;
            outln!("{}", instance.name);
            continue;
        }
        if !has_live_process(&instance) {
            bail!("instance {} is not running", instance.name);
        }
        kill_and_record(&instances, &instance, "killed by kiln kill (SIGKILL)".into())?;
        outln!("{}", instance.name);
    }
    Ok(0)
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// Kill running instances first
    #[arg(short, long)]
    force: bool,
    /// Instances: names or ids
    #[arg(required = true, value_name = "INSTANCE")]
    instances: Vec<String>,
}

pub fn rm(args: RmArgs) -> Result<u8> {
    let store = home::store()?;
    let instances = Instances::new(&store);
    for what in &args.instances {
        let instance = match instances.find(what) {
            Ok(instance) => instance,
            Err(e) if e.damaged_id().is_some() => {
                instances.remove(what)?;
                outln!("{what}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if instance.kilnd && crate::kilnd_client::rm(&instance, args.force)? {
            outln!("{}", instance.name);
            continue;
        }
        if has_live_process(&instance) {
            if !args.force {
                bail!(
                    "instance {} is running; stop it first (kiln stop {}) or use --force",
                    instance.name,
                    instance.name
                );
            }
            kill_and_record(&instances, &instance, "killed by kiln rm --force".into())?;
        }
        match instances.remove(&instance.id) {
            Ok(()) => {}
            // Its own `--rm` removed it meanwhile.
            Err(_) if !instances.dir(&instance.id).exists() => {}
            Err(e) => return Err(e.into()),
        }
        outln!("{}", instance.name);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::{signal, wait_for_end};
    use kiln_image::instance::{process_start, Instance};
    use std::time::Duration;

    #[test]
    fn a_record_never_signals_a_group_or_everyone() {
        let mut record = Instance::created("aaaaaaaaaaaa", "web", "web", Vec::new(), Vec::new());
        for pid in [0, u32::MAX, 1 << 31] {
            record.pid = Some(pid);
            let err = signal(&record, 0).unwrap_err().to_string();
            assert!(err.ends_with("which is no process"), "{err}");
        }
    }

    #[test]
    fn a_limit_past_the_end_of_time_waits_without_overflowing() {
        let mut gone = Instance::created("aaaaaaaaaaaa", "web", "web", Vec::new(), Vec::new());
        assert!(wait_for_end(&gone, Duration::MAX), "no process: ended");
        (gone.pid, gone.pid_start) = (Some(std::process::id()), process_start(std::process::id()));
        assert!(!wait_for_end(&gone, Duration::ZERO), "this process runs");
    }
}
