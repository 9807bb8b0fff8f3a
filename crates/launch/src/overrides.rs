//! What a launcher asks for on top of the image or program: `kiln run`'s flags, or a request's fields. The parsers
//! here are the flags' own (the CLI's argument parser calls them), and [`crate::resolve`] checks the values again, so
//! that a launcher without a command line gets the same one-line errors.

use crate::network::NetworkFlags;
use std::path::PathBuf;

/// The flags, as given: `None` or empty leaves the image's setting (or the default) alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// The program's arguments; when any are given, instead of the image's.
    pub args: Vec<String>,
    /// `--memory`, in bytes.
    pub memory: Option<u64>,
    /// `--cpus`.
    pub cpus: Option<u32>,
    /// `--env KEY=VALUE`: added to the image's environment, replacing a variable of the same name.
    pub env: Vec<String>,
    /// `--workdir`: absolute.
    pub workdir: Option<String>,
    /// `--file HOST:GUEST`.
    pub files: Vec<(PathBuf, String)>,
    /// `--dir HOST:GUEST`.
    pub dirs: Vec<(PathBuf, String)>,
    /// `-v NAME:/path`: added to the image's volumes, replacing one of the same name or mount path.
    pub volumes: Vec<(String, String)>,
    pub network: NetworkFlags,
    pub trace_syscalls: bool,
    pub stats: bool,
    /// `--stop-timeout`, in seconds (at least 1).
    pub stop_timeout: Option<u32>,
    /// `--core FILE`, absolute.
    pub core_file: Option<PathBuf>,
}

/// `--file`/`--dir HOST:GUEST`.
pub fn parse_mapping(s: &str) -> Result<(PathBuf, String), String> {
    match s.split_once(':') {
        Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => Ok((host.into(), guest.to_string())),
        _ => Err(format!("'{s}' is not HOST:GUEST with an absolute GUEST path")),
    }
}

/// `--workdir DIR`.
pub fn parse_workdir(s: &str) -> Result<String, String> {
    match kiln_image::is_workdir(s) {
        true => Ok(s.to_string()),
        false => Err(format!("'{s}' is not an absolute path")),
    }
}

/// `--env KEY=VALUE`.
pub fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() && !s.contains('\0') => Ok(s.to_string()),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

/// Volume names as Docker allows them: a letter or digit, then letters, digits, `_`, `.`, `-`; at most 64.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || name.len() > 64 || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(format!("'{name}' is not a volume name: use letters, digits, '_', '.' and '-', starting with a letter or digit (at most 64)"));
    }
    Ok(())
}

/// A `-v NAME:/path` argument: the volume's name and where the guest mounts it (absolute, normalised, not "/").
pub fn parse_mount(s: &str) -> Result<(String, String), String> {
    let Some((name, path)) = s.split_once(':') else {
        return Err(format!("'{s}' is not NAME:/path"));
    };
    check_volume_name(name)?;
    let normal = path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && path[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if !normal {
        return Err(format!("'{path}' is not a mount path: use an absolute path other than / (e.g. /data)"));
    }
    if path.len() > kiln_abi::boot::MOUNT_PATH_MAX {
        return Err(format!("'{path}' is longer than {} bytes", kiln_abi::boot::MOUNT_PATH_MAX));
    }
    Ok((name.to_string(), path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_arguments_are_checked() {
        assert_eq!(parse_mount("data:/data"), Ok(("data".into(), "/data".into())));
        assert_eq!(parse_mount("db-1:/var/lib/db"), Ok(("db-1".into(), "/var/lib/db".into())));
        for bad in
            ["data", "data:relative", "data:/", "data:/a/../b", "data:/a//b", "data:/a/", ":/x", "-x:/x", "a b:/x"]
        {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
        assert!(parse_mount(&format!("v:/{}", "x".repeat(200))).is_err());
    }
}
