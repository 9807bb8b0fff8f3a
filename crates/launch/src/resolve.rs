//! The resolver: an image from the store or a host program, with the flags on top, into one [`LaunchSpec`]. The
//! flags win over the image's settings; every flag and setting is checked here, before anything is launched.

use crate::error::{ImageError, ProgramError, ResolveError};
use crate::network::{self, NetworkFlags};
use crate::overrides::{parse_env, parse_mount, parse_workdir, Overrides};
use crate::spec::{LaunchSpec, Signals, Source, DEFAULT_MEMORY, DEFAULT_STOP_TIMEOUT};
use kiln_image::{Digest, Manifest, Store, StoreError};
use kiln_usernet::PortForward;
use std::path::Path;

/// What the image (or, for a program, nothing) says, before the flags.
struct Base {
    source: Source,
    shown: String,
    name: String,
    exe_path: String,
    argv0: String,
    args: Vec<String>,
    env: Vec<String>,
    memory: Option<u64>,
    cpus: Option<u32>,
    ports: Vec<PortForward>,
    volumes: Vec<(String, String)>,
    workdir: Option<String>,
}

/// `what` as `kiln run` names it: a name that starts with `/` or `.` is a program; anything else is an image if
/// `store` has one by that name, and a program otherwise (`kiln run hello` in a project directory runs the image, as
/// the user just built it).
pub fn resolve(store: Option<&Store>, what: &str, flags: &Overrides) -> Result<LaunchSpec, ResolveError> {
    let path = Path::new(what);
    if what.starts_with(['/', '.']) {
        return resolve_program(path, flags);
    }
    let Some(store) = store else { return resolve_program(path, flags) };
    // Shared with other readers; a concurrent `kiln rmi` waits, or has finished and the image is gone.
    let _reading = store.read_lock()?;
    match store.resolve(what) {
        Ok(digest) => resolve_image(store, digest, what, flags),
        Err(StoreError::NoSuchImage(_)) if path.exists() || what.contains('/') => resolve_program(path, flags),
        Err(StoreError::NoSuchImage(_)) => Err(ResolveError::NoSuchImageOrFile(what.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// The image `id` of `store` (named `shown` by the user) with `flags` on top.
pub fn resolve_image(store: &Store, id: Digest, shown: &str, flags: &Overrides) -> Result<LaunchSpec, ResolveError> {
    let image = |source| ResolveError::Image { shown: shown.to_string(), source };
    let manifest = store.manifest(&id).map_err(|e| image(e.into()))?;
    from_manifest(&manifest, id, shown, flags)
}

fn from_manifest(manifest: &Manifest, id: Digest, shown: &str, flags: &Overrides) -> Result<LaunchSpec, ResolveError> {
    let base =
        image_base(manifest, id, shown).map_err(|source| ResolveError::Image { shown: shown.to_string(), source })?;
    apply(base, flags)
}

/// The host program at `path` with `flags` on top; it must be a file this process can read.
pub fn resolve_program(path: &Path, flags: &Overrides) -> Result<LaunchSpec, ResolveError> {
    let shown = path.display().to_string();
    check_readable(path, &shown)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "program".into());
    let base = Base {
        source: Source::Program { path: path.to_path_buf() },
        exe_path: format!("/{name}"),
        argv0: shown.clone(),
        shown,
        name,
        args: Vec::new(),
        env: Vec::new(),
        memory: None,
        cpus: None,
        ports: Vec::new(),
        volumes: Vec::new(),
        workdir: None,
    };
    apply(base, flags)
}

/// A program file that cannot be opened, or is a directory, is refused as [`crate::load`] would refuse it, without
/// reading it all.
fn check_readable(path: &Path, shown: &str) -> Result<(), ProgramError> {
    let file = std::fs::File::open(path).map_err(|e| crate::load::program_error(e, path, shown))?;
    match file.metadata() {
        Ok(m) if m.is_dir() => Err(ProgramError::IsDirectory(shown.to_string())),
        Ok(_) => Ok(()),
        Err(source) => Err(ProgramError::Read { shown: shown.to_string(), source }),
    }
}

fn image_base(manifest: &Manifest, id: Digest, shown: &str) -> Result<Base, ImageError> {
    let ours = kiln_abi::boot::BOOT_VERSION;
    if manifest.boot_version != ours {
        return Err(ImageError::BootVersion {
            built_by: manifest.kiln_version.clone(),
            built_for: manifest.boot_version,
            ours,
        });
    }
    let config = &manifest.config;
    let volumes = config
        .volumes
        .iter()
        .map(|(name, path)| parse_mount(&format!("{name}:{path}")).map_err(ImageError::Volume))
        .collect::<Result<_, _>>()?;
    let ports = config
        .ports
        .iter()
        .map(|p| p.parse::<PortForward>().map_err(|e| ImageError::Port { port: p.clone(), problem: e.problem }))
        .collect::<Result<_, _>>()?;
    Ok(Base {
        source: Source::Image { id },
        shown: shown.to_string(),
        name: manifest.name.rsplit('/').next().unwrap_or(&manifest.name).to_string(),
        exe_path: config.program_path.clone(),
        argv0: config.program_path.clone(),
        args: config.args.clone(),
        env: config.env.clone(),
        memory: Some(config.memory),
        cpus: Some(config.cpus),
        ports,
        volumes,
        workdir: config.workdir.clone(),
    })
}

/// The flags on top of `base`: each one given replaces (or, for `--env` and `-v`, adds to) the image's setting.
fn apply(base: Base, flags: &Overrides) -> Result<LaunchSpec, ResolveError> {
    check_flags(flags)?;
    let mut argv = vec![base.argv0];
    argv.extend(if flags.args.is_empty() { base.args } else { flags.args.clone() });
    let network = network::resolve(&NetworkFlags {
        publish: if flags.network.publish.is_empty() { base.ports } else { flags.network.publish.clone() },
        ..flags.network.clone()
    })?;
    let volumes = merged_volumes(&base.volumes, &flags.volumes);
    check_volumes(&volumes)?;
    Ok(LaunchSpec {
        source: base.source,
        shown: base.shown,
        name: base.name,
        exe_path: base.exe_path,
        argv,
        env: merged_env(&base.env, &flags.env),
        workdir: flags.workdir.clone().or(base.workdir).unwrap_or_default(),
        memory: flags.memory.or(base.memory).unwrap_or(DEFAULT_MEMORY),
        cpus: flags.cpus.or(base.cpus).unwrap_or(1),
        network,
        volumes,
        volume_files: Vec::new(),
        files: flags.files.clone(),
        dirs: flags.dirs.clone(),
        trace_syscalls: flags.trace_syscalls,
        stats: flags.stats,
        signals: Signals { grace_secs: flags.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT) },
        core_file: flags.core_file.clone(),
        seccomp: Default::default(),
        nofile: None,
    })
}

/// The checks the command line's parsers make, for launchers that have none.
fn check_flags(flags: &Overrides) -> Result<(), ResolveError> {
    let bad = |flag| move |problem| ResolveError::Flag { flag, problem };
    for kv in &flags.env {
        parse_env(kv).map_err(bad("--env"))?;
    }
    if let Some(dir) = &flags.workdir {
        parse_workdir(dir).map_err(bad("--workdir"))?;
    }
    // Checked as parts: a host path may hold the ':' that a command line's HOST:GUEST cannot.
    let copies = flags.files.iter().map(|f| ("--file", f)).chain(flags.dirs.iter().map(|d| ("--dir", d)));
    for (flag, (host, guest)) in copies {
        if host.as_os_str().is_empty() || !guest.starts_with('/') {
            let problem = format!("'{}:{guest}' is not HOST:GUEST with an absolute GUEST path", host.display());
            return Err(bad(flag)(problem));
        }
    }
    for (name, path) in &flags.volumes {
        parse_mount(&format!("{name}:{path}")).map_err(bad("-v"))?;
    }
    if let Some(cpus) = flags.cpus.filter(|&c| c == 0 || c > kiln_vmm::vm::MAX_VCPUS) {
        return Err(ResolveError::Cpus(cpus));
    }
    if flags.stop_timeout == Some(0) {
        return Err(bad("--stop-timeout")("0 is not a number of seconds (at least 1)".into()));
    }
    Ok(())
}

/// The volume list as a whole: few enough, each named once, no mount path inside another.
fn check_volumes(mounts: &[(String, String)]) -> Result<(), ResolveError> {
    if mounts.len() > kiln_abi::boot::MAX_VOLUMES {
        return Err(ResolveError::TooManyVolumes);
    }
    for (i, (name, path)) in mounts.iter().enumerate() {
        for (other_name, other_path) in &mounts[..i] {
            if other_name == name {
                return Err(ResolveError::VolumeTwice(name.clone()));
            }
            let nested = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
            if nested(path, other_path) || nested(other_path, path) {
                return Err(ResolveError::MountsOverlap(other_path.clone(), path.clone()));
            }
        }
    }
    Ok(())
}

/// The image's volumes with `-v` on top: a flag replaces the image's volume of the same name or mount path.
pub fn merged_volumes(image: &[(String, String)], flags: &[(String, String)]) -> Vec<(String, String)> {
    let replaced = |(name, path): &&(String, String)| flags.iter().any(|(n, p)| n == name || p == path);
    image.iter().filter(|v| !replaced(v)).chain(flags).cloned().collect()
}

/// The image's environment with `--env` on top: a variable set by both has the `--env` value.
pub fn merged_env(image: &[String], flags: &[String]) -> Vec<String> {
    let key = |kv: &String| kv.split_once('=').map(|(k, _)| k.to_string()).unwrap_or_default();
    let overridden: Vec<String> = flags.iter().map(key).collect();
    image.iter().filter(|kv| !overridden.contains(&key(kv))).chain(flags).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{NetMode, Network};
    use kiln_image::manifest::{BlobRef, RunConfig};

    fn manifest() -> Manifest {
        let blob = |b: &[u8]| BlobRef { digest: Digest::of(b), size: b.len() as u64 };
        Manifest {
            schema: kiln_image::manifest::SCHEMA,
            name: "registry.example/team/web".into(),
            kiln_version: "0.1.0".into(),
            boot_version: kiln_abi::boot::BOOT_VERSION,
            kernel: blob(b"kernel"),
            program: blob(b"program"),
            prepared: blob(b"prepared"),
            rootfs: blob(b"rootfs"),
            config: RunConfig {
                program_path: "/web".into(),
                args: vec!["--port".into(), "80".into()],
                env: vec!["MODE=prod".into(), "PORT=80".into()],
                memory: 128 << 20,
                cpus: 2,
                ports: vec!["8080:80".into()],
                volumes: [("data".to_string(), "/data".to_string())].into(),
                workdir: Some("/srv".into()),
            },
        }
    }

    fn image(flags: &Overrides) -> Result<LaunchSpec, ResolveError> {
        from_manifest(&manifest(), Digest::of(b"manifest"), "web", flags)
    }

    fn error(result: Result<LaunchSpec, ResolveError>) -> String {
        crate::chain(&result.expect_err("an error"))
    }

    #[test]
    fn an_image_without_flags_runs_as_built() {
        let spec = image(&Overrides::default()).unwrap();
        assert_eq!(spec.source, Source::Image { id: Digest::of(b"manifest") });
        assert_eq!((spec.shown.as_str(), spec.name.as_str(), spec.exe_path.as_str()), ("web", "web", "/web"));
        assert_eq!(spec.argv, ["/web", "--port", "80"]);
        assert_eq!(spec.env, ["MODE=prod", "PORT=80"]);
        assert_eq!((spec.memory, spec.cpus, spec.workdir.as_str()), (128 << 20, 2, "/srv"));
        assert_eq!(spec.volumes, [("data".to_string(), "/data".to_string())]);
        let published: Vec<String> = spec.network.published().iter().map(ToString::to_string).collect();
        assert_eq!(published, ["8080:80/tcp"]);
        assert_eq!(spec.signals.grace_secs, DEFAULT_STOP_TIMEOUT);
    }

    #[test]
    fn flags_win_over_the_images_settings() {
        let flags = Overrides {
            args: vec!["--debug".into()],
            memory: Some(256 << 20),
            cpus: Some(4),
            env: vec!["PORT=81".into(), "EXTRA=1".into()],
            workdir: Some("/tmp".into()),
            volumes: vec![("cache".into(), "/data".into())],
            network: NetworkFlags { publish: vec!["9090:81".parse().unwrap()], ..Default::default() },
            stop_timeout: Some(3),
            stats: true,
            ..Default::default()
        };
        let spec = image(&flags).unwrap();
        assert_eq!(spec.argv, ["/web", "--debug"]);
        assert_eq!(spec.env, ["MODE=prod", "PORT=81", "EXTRA=1"]);
        assert_eq!((spec.memory, spec.cpus, spec.workdir.as_str()), (256 << 20, 4, "/tmp"));
        assert_eq!(spec.volumes, [("cache".to_string(), "/data".to_string())], "-v replaces by mount path");
        let published: Vec<String> = spec.network.published().iter().map(ToString::to_string).collect();
        assert_eq!(published, ["9090:81/tcp"], "-p replaces the image's ports");
        assert_eq!((spec.signals.grace_secs, spec.stats), (3, true));
    }

    #[test]
    fn a_program_gets_the_defaults() {
        let path = std::env::current_exe().unwrap();
        let spec = resolve_program(&path, &Overrides { args: vec!["a".into()], ..Default::default() }).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        assert_eq!(spec.source, Source::Program { path: path.clone() });
        assert_eq!(spec.argv, [path.display().to_string(), "a".into()]);
        assert_eq!((spec.exe_path, spec.name.as_str()), (format!("/{name}"), &*name));
        assert_eq!((spec.memory, spec.cpus, spec.workdir.as_str()), (DEFAULT_MEMORY, 1, ""));
        assert!(spec.env.is_empty() && spec.volumes.is_empty());
        assert!(matches!(spec.network, Network::User { ref publish, .. } if publish.is_empty()));
    }

    #[test]
    fn programs_that_cannot_be_read_are_refused_in_the_users_words() {
        let none = Overrides::default();
        assert_eq!(error(resolve_program(Path::new("/no/such/prog"), &none)), "/no/such/prog: no such file");
        assert_eq!(error(resolve_program(Path::new("/"), &none)), "/: is a directory, not a program");
    }

    #[test]
    fn bad_images_and_flags_say_what_and_where() {
        let mut old = manifest();
        old.boot_version += 1;
        let e = error(from_manifest(&old, Digest::of(b"m"), "web", &Overrides::default()));
        assert!(e.starts_with("image web: it was built by kiln 0.1.0 for boot protocol"), "{e}");
        let mut bad_port = manifest();
        bad_port.config.ports = vec!["80".into()];
        let e = error(from_manifest(&bad_port, Digest::of(b"m"), "web", &Overrides::default()));
        assert!(e.starts_with("image web: its port 80: "), "{e}");

        let flags = |f: fn(&mut Overrides)| {
            let mut o = Overrides::default();
            f(&mut o);
            o
        };
        let e = error(image(&flags(|o| o.network.mode = NetMode::None)));
        assert_eq!(e, "-p publishes ports through the user-mode network: it cannot be used with --net none");
        let e = error(image(&flags(|o| {
            o.volumes = vec![("data".into(), "/elsewhere".into()), ("d2".into(), "/elsewhere/x".into())]
        })));
        assert_eq!(e, "-v: mount paths /elsewhere and /elsewhere/x overlap");
        let e = error(image(&flags(|o| {
            o.volumes = (0..=kiln_abi::boot::MAX_VOLUMES).map(|i| (format!("v{i}"), format!("/v{i}"))).collect()
        })));
        assert_eq!(e, format!("-v: at most {} volumes per instance", kiln_abi::boot::MAX_VOLUMES));
        assert_eq!(error(image(&flags(|o| o.env = vec!["NOVALUE".into()]))), "--env: 'NOVALUE' is not KEY=VALUE");
        let e = error(image(&flags(|o| o.files = vec![("a:b".into(), "x".into())])));
        assert_eq!(e, "--file: 'a:b:x' is not HOST:GUEST with an absolute GUEST path");
        assert!(image(&flags(|o| o.dirs = vec![("a:b".into(), "/x".into())])).is_ok(), "a ':' in a host path");
        assert_eq!(
            error(image(&flags(|o| o.workdir = Some("rel".into())))),
            "--workdir: 'rel' is not an absolute path"
        );
        assert!(error(image(&flags(|o| o.cpus = Some(0)))).starts_with("--cpus 0 is out of range"));
        let e = error(image(&flags(|o| o.network.ip = Some((std::net::Ipv4Addr::new(10, 0, 2, 15), 0)))));
        assert!(e.starts_with("--ip '/0' is not a prefix length"), "{e}");
    }

    #[test]
    fn a_spec_round_trips_through_json() {
        let spec = image(&Overrides::default()).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"8080:80/tcp\""), "{json}");
        assert_eq!(serde_json::from_str::<LaunchSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn volume_flags_add_to_the_images_and_replace_by_name_or_path() {
        let v = |n: &str, p: &str| (n.to_string(), p.to_string());
        let image = [v("db", "/var/db"), v("logs", "/logs"), v("cache", "/cache")];
        let flags = [v("db2", "/var/db"), v("logs", "/other"), v("extra", "/x")];
        assert_eq!(
            merged_volumes(&image, &flags),
            [v("cache", "/cache"), v("db2", "/var/db"), v("logs", "/other"), v("extra", "/x")]
        );
    }

    #[test]
    fn flags_override_the_images_environment() {
        let image = ["A=1".to_string(), "B=2".to_string()];
        let flags = ["B=3".to_string(), "C=4".to_string()];
        assert_eq!(merged_env(&image, &flags), ["A=1", "B=3", "C=4"]);
    }
}
