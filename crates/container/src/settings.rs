//! What the image config says about running the image: its `Entrypoint` and `Cmd`, `Env`, `WorkingDir`,
//! `ExposedPorts` and `User`; and the platform, which must be linux/amd64.

use crate::ContainerError;
use oci_spec::image::ImageConfiguration;

/// The search path of a container whose image sets none (what Docker and containerd use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, in the config's order.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `PORT/tcp` or `PORT/udp`, sorted.
    pub exposed_ports: Vec<String>,
    pub user: Option<String>,
}

impl Settings {
    pub fn from_config(bytes: &[u8]) -> Result<Settings, ContainerError> {
        let config = ImageConfiguration::from_reader(bytes)
            .map_err(|e| ContainerError::Json("the image config", e.to_string()))?;
        let (os, arch) = (config.os().to_string(), config.architecture().to_string());
        if os != "linux" || arch != "amd64" {
            return Err(ContainerError::WrongPlatform(format!("{os}/{arch}")));
        }
        let Some(c) = config.config() else { return Ok(Settings::default()) };
        let mut exposed_ports = c.exposed_ports().clone().unwrap_or_default();
        exposed_ports.sort();
        Ok(Settings {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            workdir: c.working_dir().clone().filter(|w| !w.is_empty()),
            exposed_ports,
            user: c.user().clone().filter(|u| !u.is_empty()),
        })
    }

    /// The value of `PATH` in the image's environment, or the default.
    pub fn path(&self) -> &str {
        self.env.iter().rev().find_map(|kv| kv.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH)
    }

    /// Whether `User` names someone other than root (the program runs as root in Kiln; see the crate docs).
    pub fn user_is_not_root(&self) -> bool {
        self.user.as_deref().is_some_and(|u| !matches!(u.split(':').next(), Some("" | "0" | "root")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_gives_the_run_settings() {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
            "config":{"Entrypoint":["/app"],"Cmd":["--port","80"],"Env":["PATH=/opt/bin","A=1"],"WorkingDir":"/srv",
            "ExposedPorts":{"80/tcp":{},"53/udp":{}},"User":"nobody"}}"#;
        let s = Settings::from_config(config).unwrap();
        assert_eq!(s.entrypoint, ["/app"]);
        assert_eq!(s.cmd, ["--port", "80"]);
        assert_eq!(s.path(), "/opt/bin");
        assert_eq!(s.workdir.as_deref(), Some("/srv"));
        assert_eq!(s.exposed_ports, ["53/udp", "80/tcp"]);
        assert!(s.user_is_not_root());
        let arm = br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(
            Settings::from_config(arm).unwrap_err().to_string(),
            "the image is for linux/arm64; kiln runs linux/amd64 images"
        );
    }
}
