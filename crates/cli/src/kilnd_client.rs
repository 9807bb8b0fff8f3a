//! `kiln` as kilnd's client: when kilnd answers on its socket (`$KILN_HOME/kilnd.sock`), `kiln run -d` starts the
//! instance there (on kilnd's threads), `ps` and `logs` ask kilnd, and `stop`, `kill`, `rm` of kilnd's instances go
//! through its API. When no kilnd answers, `kiln run -d` starts an instance process as before (`detach.rs`), and the
//! other commands work on the store; a kilnd instance is never signalled by pid (the pid is kilnd's).
//! kilnd is not started on demand: a command that finds no kilnd keeps the per-process path, so nothing the user did
//! not ask for starts a long-lived daemon; `kiln daemon` (or contrib/kilnd.service) starts it.

use crate::run::RunArgs;
use anyhow::{bail, Context, Result};
use kiln_image::health::HealthCheck;
use kiln_image::instance::{now, Instance, Instances, State, KEPT_SNAPSHOT};
use kilnd::api::{CreateRequest, Created, RestoreRequest, SnapshotRequest, SnapshotWritten};
use kilnd::client::Client;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// kilnd, if one answers on this Kiln home's socket.
pub fn answering() -> Option<Client> {
    let socket = kilnd::default_socket().ok()?;
    if !socket.exists() {
        return None;
    }
    let client = Client::new(socket);
    client.answers().then_some(client)
}

/// A host path as kilnd must get it: absolute (kilnd's working directory is not this one's).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `kiln run -d` through kilnd: `image` is an image name or id, or a program's path.
pub fn run(client: &Client, args: &RunArgs, image: &str) -> Result<u8> {
    let mut overrides = args.overrides();
    for (host, _) in overrides.files.iter_mut().chain(overrides.dirs.iter_mut()) {
        *host = absolute(host);
    }
    let is_path = image.starts_with('.') || (Path::new(image).exists() && !is_image(image));
    let image = if is_path { absolute(Path::new(image)).to_string_lossy().into_owned() } else { image.to_string() };
    let restart = args.restart.map(|p| p.to_string());
    let mut request = CreateRequest::from_overrides(image, args.name.clone(), args.rm, restart, &overrides);
    request.health = args.health_check.clone().map(|check| HealthCheck {
        check,
        interval_ms: args.health_interval,
        timeout_ms: args.health_timeout,
        retries: args.health_retries,
    });
    request.jail = args.jail;
    let body = serde_json::to_value(&request).context("cannot write the request")?;
    let created: Created = client.request("POST", "/instances", Some(&body))?.json()?;
    outln!("{}", created.id);
    Ok(0)
}

/// Whether the store has an image named `what` (which `kiln_launch::resolve` prefers to a file of that name).
pub fn is_image(what: &str) -> bool {
    kiln_launch::home::store().is_ok_and(|store| store.resolve(what).is_ok())
}

/// `kiln ps` through kilnd.
pub fn list(client: &Client, all: bool) -> Result<Vec<Instance>> {
    Ok(client.request("GET", &format!("/instances?all={all}"), None)?.json()?)
}

/// An instance name or id as a path segment: names and ids are letters, digits, `.`, `_`, `-`; anything else names
/// no instance.
fn segment(what: &str) -> Result<&str> {
    match !what.is_empty() && what.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        true => Ok(what),
        false => bail!("no such instance: {what}"),
    }
}

/// `kiln logs` through kilnd: the log (or its tail), then with `follow` what comes until the instance ends.
pub fn logs(client: &Client, what: &str, tail: Option<usize>, follow: bool) -> Result<u8> {
    let what = segment(what)?;
    let tail = tail.map(|n| format!("?tail={n}")).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let first = client.request("GET", &format!("/instances/{what}/logs{tail}"), None)?.body;
    out.write_all(&first)?;
    out.flush()?;
    if !follow {
        return Ok(0);
    }
    // Where the whole log ends now: the tail printed is its end.
    let mut at = client.request("GET", &format!("/instances/{what}/logs"), None)?.body.len();
    loop {
        let ended = match client.request("GET", &format!("/instances/{what}"), None) {
            Ok(answer) => answer.json::<Instance>()?.state == State::Exited,
            Err(_) => true,
        };
        let more = match client.request("GET", &format!("/instances/{what}/logs?since={at}"), None) {
            Ok(answer) => answer.body,
            Err(_) => Vec::new(),
        };
        at += more.len();
        out.write_all(&more)?;
        out.flush()?;
        if ended {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What to say when a kilnd instance looks alive but no kilnd answers: its pid is kilnd's, never to be signalled.
fn unreachable(instance: &Instance) -> anyhow::Error {
    anyhow::anyhow!(
        "instance {} runs in kilnd (pid {}), which does not answer on {}",
        instance.name,
        instance.pid.unwrap_or(0),
        kilnd::default_socket().map(|s| s.display().to_string()).unwrap_or_default()
    )
}

fn alive(instance: &Instance) -> bool {
    instance.state != State::Exited && instance.vmm_alive()
}

/// `kiln stop` of a kilnd instance.
pub fn stop(instance: &Instance, secs: u64) -> Result<()> {
    match answering() {
        Some(client) => {
            client.request("POST", &format!("/instances/{}/stop?t={secs}", instance.id), None)?;
            Ok(())
        }
        None if alive(instance) => Err(unreachable(instance)),
        None if kept(instance) => drop_kept(instance, 143, "stopped while kept for the next kilnd (its state dropped)"),
        None => Ok(()),
    }
}

/// Whether the instance waits in its folder for the next kilnd (kept as the last one stopped).
fn kept(instance: &Instance) -> bool {
    instance.kept && instance.state == State::Running
}

/// A kept instance stopped or killed while no kilnd runs: its kept state is removed and it is recorded ended (and
/// stopped), so that the next kilnd does not run it on.
fn drop_kept(instance: &Instance, code: i32, why: &str) -> Result<()> {
    let store = kiln_launch::home::store()?;
    let instances = Instances::new(&store);
    match std::fs::remove_file(instances.dir(&instance.id).join(KEPT_SNAPSHOT)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("instance {}: cannot remove its kept state", instance.name))
        }
        _ => {}
    }
    instances.update(&instance.id, |i| {
        (i.kept, i.stopped, i.state) = (false, true, State::Exited);
        (i.exit_code, i.reason, i.finished_ms) = (Some(code), Some(why.to_string()), Some(now()));
    })?;
    Ok(())
}

/// `kiln kill` of a kilnd instance.
pub fn kill(instance: &Instance) -> Result<()> {
    match answering() {
        Some(client) => {
            client.request("POST", &format!("/instances/{}/kill", instance.id), None)?;
            Ok(())
        }
        None if alive(instance) => Err(unreachable(instance)),
        None if kept(instance) => drop_kept(instance, 137, "killed while kept for the next kilnd (its state dropped)"),
        None => bail!("instance {} is not running", instance.name),
    }
}

/// `kiln rm` of a kilnd instance: true if kilnd removed it; false if the caller removes the record (no kilnd, and
/// the instance ended with the kilnd that ran it).
pub fn rm(instance: &Instance, force: bool) -> Result<bool> {
    match answering() {
        Some(client) => {
            client.request("DELETE", &format!("/instances/{}?force={force}", instance.id), None)?;
            Ok(true)
        }
        None if alive(instance) => Err(unreachable(instance)),
        None => Ok(false),
    }
}

/// `kiln snapshot` of a kilnd instance: what was written.
pub fn snapshot(instance: &Instance, path: &Path, leave_running: bool) -> Result<SnapshotWritten> {
    let Some(client) = answering() else {
        return match alive(instance) || instance.kept {
            true => Err(unreachable(instance)),
            false => bail!("instance {} is not running", instance.name),
        };
    };
    let request = SnapshotRequest { path: path.to_path_buf(), leave_running };
    let body = serde_json::to_value(&request).context("cannot write the request")?;
    Ok(client.request("POST", &format!("/instances/{}/snapshot", instance.id), Some(&body))?.json()?)
}

/// `kiln restore -d` through kilnd: a new instance of kilnd's, running on from `path`.
pub fn restore(client: &Client, path: &Path, name: Option<String>, auto_remove: bool) -> Result<u8> {
    let request = RestoreRequest { path: absolute(path), name, auto_remove };
    let body = serde_json::to_value(&request).context("cannot write the request")?;
    let created: Created = client.request("POST", "/instances/restore", Some(&body))?.json()?;
    outln!("{}", created.id);
    Ok(0)
}
