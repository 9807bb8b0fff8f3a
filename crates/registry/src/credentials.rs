//! Registry credentials: Kiln's own file (`$KILN_HOME/auth.json`, mode 0600, written by `kiln login`), then Docker's
//! `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`): its `credHelpers` entry for the
//! registry, its `auths` entry, then its `credsStore`. A helper is `docker-credential-NAME get`, found on `PATH`,
//! given the registry on stdin, answering `{"Username": ..., "Secret": ...}`. Kiln's file has Docker's shape
//! (`{"auths": {"REGISTRY": {"auth": base64("user:password")}}}`), so other tools read it too.

use crate::error::io;
use crate::RegistryError;
use base64::Engine as _;
use serde_json::{Map, Value};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where credentials are looked for.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// Kiln's own file, written by `kiln login`.
    pub kiln_file: Option<PathBuf>,
    /// Docker's config.json.
    pub docker_config: Option<PathBuf>,
    /// Where credential helpers are searched for (a `PATH`).
    pub helper_path: Option<OsString>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential {{ username: {:?}, password: <hidden> }}", self.username)
    }
}

impl Sources {
    /// Kiln's file in `kiln_home`, Docker's where Docker looks, helpers on `PATH`.
    pub fn from_env(kiln_home: Option<&Path>) -> Sources {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let docker_dir =
            var("DOCKER_CONFIG").map(PathBuf::from).or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".docker")));
        Sources {
            kiln_file: kiln_home.map(|h| h.join("auth.json")),
            docker_config: docker_dir.map(|d| d.join("config.json")),
            helper_path: var("PATH"),
        }
    }

    /// The credentials for `registry`, or none (anonymous).
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        if let Some(file) = &self.kiln_file {
            if let Some(c) = auths_entry(&read_json(file)?, registry)? {
                return Ok(Some(c));
            }
        }
        let Some(file) = &self.docker_config else { return Ok(None) };
        let docker = read_json(file)?;
        let helper_for = docker.get("credHelpers").and_then(|h| {
            h.as_object()?.iter().find(|(k, _)| same_registry(k, registry)).and_then(|(_, v)| v.as_str())
        });
        if let Some(helper) = helper_for {
            return self.ask_helper(helper, registry);
        }
        if let Some(c) = auths_entry(&docker, registry)? {
            return Ok(Some(c));
        }
        match docker.get("credsStore").and_then(Value::as_str) {
            Some(helper) => self.ask_helper(helper, registry),
            None => Ok(None),
        }
    }

    fn ask_helper(&self, helper: &str, registry: &str) -> Result<Option<Credential>, RegistryError> {
        let program = format!("docker-credential-{helper}");
        let found = self
            .helper_path
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(&program))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                RegistryError::Credentials(format!("Docker's config names the helper {program}, which is not on PATH"))
            })?;
        let mut child = std::process::Command::new(&found)
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(io(&found))?;
        let server = if is_docker_hub(registry) { DOCKER_HUB_KEY } else { registry };
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(server.as_bytes()).map_err(io(&found))?;
        }
        let out = child.wait_with_output().map_err(io(&found))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if said.contains("credentials not found") {
                return Ok(None);
            }
            return Err(RegistryError::Credentials(format!("{program} get failed: {said}")));
        }
        let answer: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| RegistryError::Credentials(format!("{program} get answered no JSON: {e}")))?;
        let field = |k: &str| answer.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let (username, password) = (field("Username"), field("Secret"));
        if username == "<token>" {
            return Err(RegistryError::Credentials(format!(
                "{program} holds an identity token for {registry}, which kiln cannot use yet; kiln login {registry}"
            )));
        }
        Ok(Some(Credential { username, password }))
    }
}

/// The key Docker files Docker Hub's credentials under.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

fn is_docker_hub(registry: &str) -> bool {
    matches!(registry, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

/// Whether a config key (`reg.example`, `https://reg.example/v1/`) names `registry`.
fn same_registry(key: &str, registry: &str) -> bool {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or_default();
    host == registry || (is_docker_hub(registry) && is_docker_hub(host))
}

fn read_json(path: &Path) -> Result<Value, RegistryError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Credentials(format!("{} is not JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Value::Object(Map::new())),
        Err(e) => Err(io(path)(e)),
    }
}

fn auths_entry(config: &Value, registry: &str) -> Result<Option<Credential>, RegistryError> {
    let Some(auths) = config.get("auths").and_then(Value::as_object) else { return Ok(None) };
    let Some((_, entry)) = auths.iter().find(|(k, _)| same_registry(k, registry)) else { return Ok(None) };
    let Some(auth) = entry.get("auth").and_then(Value::as_str).filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let bad = || RegistryError::Credentials(format!("the entry for {registry} is not base64 of user:password"));
    let decoded = base64::engine::general_purpose::STANDARD.decode(auth).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (username, password) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credential { username: username.to_string(), password: password.to_string() }))
}

/// Whether `registry` accepts `credential` (for `kiln login`, before they are saved): a bearer-token registry must
/// grant a token with them; a basic-auth one must not answer 401 to a request made with them.
pub fn check(registry: &str, credential: &Credential, options: &crate::Options) -> Result<(), RegistryError> {
    use oci_client::errors::OciDistributionError;
    let probe = crate::RemoteName::parse(&format!("{registry}/kiln/login-check:probe"))?;
    let auth = oci_client::secrets::RegistryAuth::Basic(credential.username.clone(), credential.password.clone());
    let session = crate::connect::connect_with(
        &probe,
        options,
        oci_client::RegistryOperation::Pull,
        auth,
        std::sync::Arc::new(crate::NoProgress),
    )?;
    let answer = session.runtime.block_on(session.client.fetch_manifest_digest(&probe.inner, &session.auth));
    match answer {
        Err(e @ (OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_))) => {
            Err(crate::connect::classify(registry, e))
        }
        Err(OciDistributionError::RequestError(e)) => Err(crate::connect::classify(registry, e.into())),
        // Anything else (no such manifest, above all) means the credentials were let through.
        _ => Ok(()),
    }
}

/// Writes `config` to `path`, readable by its owner only, through a temporary file and a rename.
fn write_private(path: &Path, config: &Value) -> Result<(), RegistryError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(".auth.json.{}", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(config).expect("JSON values serialise");
    bytes.push(b'\n');
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io(path))
}

/// Records `credential` for `registry` in Kiln's file `path`.
pub fn save(path: &Path, registry: &str, credential: &Credential) -> Result<(), RegistryError> {
    let mut config = read_json(path)?;
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", credential.username, credential.password));
    let root = config
        .as_object_mut()
        .ok_or_else(|| RegistryError::Credentials(format!("{} is not a JSON object", path.display())))?;
    let auths = root.entry("auths").or_insert_with(|| Value::Object(Map::new()));
    let auths = auths.as_object_mut().ok_or_else(|| RegistryError::Credentials("\"auths\" is not an object".into()))?;
    auths.retain(|k, _| !same_registry(k, registry));
    auths.insert(registry.to_string(), serde_json::json!({ "auth": auth }));
    write_private(path, &config)
}

/// Forgets `registry`'s credentials in Kiln's file `path`; whether there were any.
pub fn forget(path: &Path, registry: &str) -> Result<bool, RegistryError> {
    let mut config = read_json(path)?;
    let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) else { return Ok(false) };
    let before = auths.len();
    auths.retain(|k, _| !same_registry(k, registry));
    if auths.len() == before {
        return Ok(false);
    }
    write_private(path, &config)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-credentials-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn cred(u: &str, p: &str) -> Credential {
        Credential { username: u.into(), password: p.into() }
    }

    #[test]
    fn kiln_logins_are_kept_private_and_forgotten() {
        let dir = scratch("kiln");
        let file = dir.join("home/auth.json");
        let sources = Sources { kiln_file: Some(file.clone()), ..Default::default() };
        assert_eq!(sources.lookup("reg.example").unwrap(), None);
        save(&file, "reg.example", &cred("ann", "pa:ss")).unwrap();
        save(&file, "127.0.0.1:5000", &cred("bob", "x")).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(sources.lookup("reg.example").unwrap(), Some(cred("ann", "pa:ss")));
        save(&file, "reg.example", &cred("ann", "new")).unwrap();
        assert_eq!(sources.lookup("reg.example").unwrap(), Some(cred("ann", "new")));
        assert!(forget(&file, "reg.example").unwrap());
        assert!(!forget(&file, "reg.example").unwrap());
        assert_eq!(sources.lookup("reg.example").unwrap(), None);
        assert_eq!(sources.lookup("127.0.0.1:5000").unwrap(), Some(cred("bob", "x")));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn docker_config_auths_and_helpers_are_read() {
        let dir = scratch("docker");
        let helper = dir.join("docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread reg\ncase \"$reg\" in\n  helped.example) echo '{\"Username\":\"hu\",\"Secret\":\"hs\"}';;\n  https://index.docker.io/v1/) echo '{\"Username\":\"hub\",\"Secret\":\"hp\"}';;\n  *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.join("config.json");
        let basic = base64::engine::general_purpose::STANDARD.encode("du:dp");
        std::fs::write(
            &config,
            format!(
                r#"{{"auths": {{"https://plain.example/v1/": {{"auth": "{basic}"}}}}, "credHelpers": {{"helped.example": "fake"}}, "credsStore": "fake"}}"#
            ),
        )
        .unwrap();
        let sources = Sources { kiln_file: None, docker_config: Some(config), helper_path: Some(dir.clone().into()) };
        assert_eq!(sources.lookup("plain.example").unwrap(), Some(cred("du", "dp")));
        assert_eq!(sources.lookup("helped.example").unwrap(), Some(cred("hu", "hs")));
        assert_eq!(sources.lookup("docker.io").unwrap(), Some(cred("hub", "hp")), "the store, under Hub's key");
        assert_eq!(sources.lookup("other.example").unwrap(), None, "the helper has none");
        let missing = Sources { helper_path: Some(dir.join("nowhere").into()), ..sources };
        assert!(missing.lookup("helped.example").unwrap_err().to_string().contains("not on PATH"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
