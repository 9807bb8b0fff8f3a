//! `Kiln.toml`: how `kiln build` makes an image of a project (documented in docs/kiln-toml.md). Parsed from toml's
//! spanned tree rather than through serde derive, so that every error names the line and the key
//! (`Kiln.toml:7: unknown key "memroy" — did you mean "memory"?`).

use crate::reference::Reference;
use crate::size::parse_size;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub const FILE_NAME: &str = "Kiln.toml";
pub const DEFAULT_MEMORY: u64 = 64 << 20;

/// Where the program comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binary {
    /// A static executable, relative to the project directory unless absolute.
    Path(PathBuf),
    /// A package of the cargo workspace the project is in, built with `--release --target x86_64-unknown-linux-musl`;
    /// `bin` names the executable when it is not the package's name.
    Cargo { package: String, bin: Option<String> },
    /// `from`: a container image (`oci-archive:PATH`, `docker-archive:PATH`, `oci:DIR`, `registry:REF`, paths
    /// relative to the project directory); its program, settings and root filesystem make the image.
    Container(String),
}

/// A parsed, checked `Kiln.toml`. Host paths are as written (relative to [`Project::dir`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub dir: PathBuf,
    pub name: String,
    pub binary: Binary,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Host path → guest path.
    pub files: BTreeMap<String, String>,
    pub dirs: BTreeMap<String, String>,
    pub memory: u64,
    pub cpus: u32,
    /// In `kiln run -p` syntax.
    pub ports: Vec<String>,
    /// Volume name → guest mount path.
    pub volumes: BTreeMap<String, String>,
    /// The directory the program starts in (absolute); the root if unset.
    pub workdir: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KilnTomlError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    At { file: String, line: usize, message: String },
}

const KEYS: &[&str] =
    &["name", "binary", "from", "args", "env", "files", "dirs", "memory", "cpus", "ports", "volumes", "workdir"];
const CONTAINER_SOURCES: [&str; 4] = ["oci-archive:", "docker-archive:", "oci:", "registry:"];
const BINARY_KEYS: &[&str] = &["cargo", "bin"];

/// Reads `Kiln.toml` (or another file in its format) and checks it.
pub fn load(path: &Path) -> Result<Project, KilnTomlError> {
    let src = std::fs::read_to_string(path).map_err(|source| KilnTomlError::Read { path: path.into(), source })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&src, &path.display().to_string(), dir)
}

struct Parser<'a> {
    src: &'a str,
    file: &'a str,
}

type Value<'i> = Spanned<DeValue<'i>>;

impl Parser<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> KilnTomlError {
        // Bytes, not a str slice: a span that starts inside a multi-byte character must not panic.
        let before = &self.src.as_bytes()[..span.start.min(self.src.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        KilnTomlError::At { file: self.file.to_string(), line, message: message.into() }
    }

    fn unknown(&self, key: &Spanned<std::borrow::Cow<'_, str>>, known: &[&str], within: &str) -> KilnTomlError {
        let name = key.get_ref();
        let hint = closest(name, known)
            .map(|k| format!(" — did you mean \"{k}\"?"))
            .unwrap_or_else(|| format!(" (known keys{within}: {})", known.join(", ")));
        self.err(key.span(), format!("unknown key \"{name}\"{within}{hint}"))
    }

    fn string(&self, key: &str, v: &Value<'_>) -> Result<String, KilnTomlError> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            other => Err(self.err(v.span(), format!("{key} must be a string, not {}", kind(other)))),
        }
    }

    fn strings(&self, key: &str, v: &Value<'_>) -> Result<Vec<String>, KilnTomlError> {
        match v.get_ref() {
            DeValue::Array(items) => items.iter().map(|item| self.string(&format!("{key}[..]"), item)).collect(),
            other => Err(self.err(v.span(), format!("{key} must be an array of strings, not {}", kind(other)))),
        }
    }

    /// A table of strings, with each key's span for errors about it.
    fn string_table(&self, key: &str, v: &Value<'_>) -> Result<Vec<(Range<usize>, String, String)>, KilnTomlError> {
        let DeValue::Table(table) = v.get_ref() else {
            return Err(self.err(v.span(), format!("{key} must be a table, not {}", kind(v.get_ref()))));
        };
        table
            .iter()
            .map(|(k, val)| {
                let value = self.string(&format!("{key}.{}", k.get_ref()), val)?;
                Ok((k.span(), k.get_ref().to_string(), value))
            })
            .collect()
    }

    fn guest_paths(&self, key: &str, v: &Value<'_>) -> Result<BTreeMap<String, String>, KilnTomlError> {
        let mut map = BTreeMap::new();
        for (span, host, guest) in self.string_table(key, v)? {
            if !is_guest_path(&guest) {
                return Err(self.err(span, format!("{key}.\"{host}\": the guest path {guest:?} must be absolute")));
            }
            if host.is_empty() {
                return Err(self.err(span, format!("{key}: the host path is empty")));
            }
            map.insert(host, guest);
        }
        Ok(map)
    }

    fn binary(&self, v: &Value<'_>) -> Result<Binary, KilnTomlError> {
        match v.get_ref() {
            DeValue::String(s) if !s.is_empty() => Ok(Binary::Path(PathBuf::from(s.as_ref()))),
            DeValue::Table(table) => {
                let (mut package, mut bin) = (None, None);
                for (k, val) in table.iter() {
                    match k.get_ref().as_ref() {
                        "cargo" => package = Some(self.string("binary.cargo", val)?),
                        "bin" => bin = Some(self.string("binary.bin", val)?),
                        _ => return Err(self.unknown(k, BINARY_KEYS, " in binary")),
                    }
                }
                let package = package
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| self.err(v.span(), "binary: a table needs cargo = \"PACKAGE\""))?;
                Ok(Binary::Cargo { package, bin })
            }
            _ => Err(self.err(v.span(), "binary must be a path (\"target/app\") or { cargo = \"PACKAGE\" }")),
        }
    }
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn is_guest_path(path: &str) -> bool {
    path.starts_with('/') && path.split('/').skip(1).all(|c| !c.is_empty() && c != "." && c != "..")
}

fn valid_env_key(key: &str) -> bool {
    !key.is_empty() && !key.contains(['=', '\0'])
}

fn valid_volume_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The known key a typo most likely meant: within two edits, or one that starts the same way.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.min(k.len() / 2) || (key.len() >= 3 && k.starts_with(key)))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Parses `src`, the contents of `file` (as errors name it), for a project in `dir`.
pub fn parse(src: &str, file: &str, dir: PathBuf) -> Result<Project, KilnTomlError> {
    let p = Parser { src, file };
    let root = DeTable::parse(src).map_err(|e| {
        let message = e.message().trim_end().replace('\n', "; ");
        p.err(e.span().unwrap_or(0..0), message)
    })?;
    let mut project = Project {
        dir,
        name: String::new(),
        binary: Binary::Path(PathBuf::new()),
        args: Vec::new(),
        env: BTreeMap::new(),
        files: BTreeMap::new(),
        dirs: BTreeMap::new(),
        memory: DEFAULT_MEMORY,
        cpus: 1,
        ports: Vec::new(),
        volumes: BTreeMap::new(),
        workdir: None,
    };
    let (mut has_name, mut has_binary) = (false, false);
    for (key, v) in root.get_ref().iter() {
        match key.get_ref().as_ref() {
            "name" => {
                project.name = p.string("name", v)?;
                if !Reference::is_valid_name(&project.name) {
                    return Err(p.err(
                        v.span(),
                        format!(
                            "name {:?} is not an image name: use at most {} lower-case letters, digits, '.', '_', '-' \
                             and '/'",
                            project.name,
                            crate::reference::MAX_NAME
                        ),
                    ));
                }
                has_name = true;
            }
            "binary" | "from" if has_binary => {
                return Err(p.err(key.span(), "binary and from exclude each other: the program is one or the other"));
            }
            "binary" => {
                project.binary = p.binary(v)?;
                has_binary = true;
            }
            "from" => {
                let source = p.string("from", v)?;
                if !CONTAINER_SOURCES.iter().any(|prefix| source.len() > prefix.len() && source.starts_with(prefix)) {
                    return Err(p.err(
                        v.span(),
                        format!(
                            "from {source:?} names no container image: use oci-archive:PATH, docker-archive:PATH, \
                             oci:DIR or registry:REF"
                        ),
                    ));
                }
                project.binary = Binary::Container(source);
                has_binary = true;
            }
            "args" => project.args = p.strings("args", v)?,
            "workdir" => {
                let dir = p.string("workdir", v)?;
                if !crate::is_workdir(&dir) {
                    return Err(p.err(v.span(), format!("workdir {dir:?} must be an absolute path")));
                }
                project.workdir = Some(dir);
            }
            "env" => {
                for (span, k, value) in p.string_table("env", v)? {
                    if !valid_env_key(&k) || value.contains('\0') {
                        return Err(p.err(span, format!("env: {k:?} is not a variable name")));
                    }
                    project.env.insert(k, value);
                }
            }
            "files" => project.files = p.guest_paths("files", v)?,
            "dirs" => project.dirs = p.guest_paths("dirs", v)?,
            "memory" => {
                project.memory = match v.get_ref() {
                    DeValue::String(s) => parse_size(s).map_err(|e| p.err(v.span(), format!("memory: {e}")))?,
                    DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix()).map_err(|_| {
                        p.err(v.span(), "memory must be a positive number of bytes, or a size like \"128M\"")
                    })?,
                    other => {
                        return Err(p.err(v.span(), format!("memory must be a size like \"128M\", not {}", kind(other))))
                    }
                };
            }
            "cpus" => {
                let max = kiln_vmm::vm::MAX_VCPUS;
                let bad = || p.err(v.span(), format!("cpus must be a whole number from 1 to {max}"));
                let DeValue::Integer(i) = v.get_ref() else { return Err(bad()) };
                project.cpus = u32::from_str_radix(i.as_str(), i.radix())
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(bad)?;
            }
            "ports" => {
                let DeValue::Array(items) = v.get_ref() else {
                    return Err(p.err(v.span(), "ports must be an array of strings like \"8080:80\""));
                };
                for item in items.iter() {
                    let spec = p.string("ports[..]", item)?;
                    spec.parse::<kiln_usernet::PortForward>().map_err(|e| p.err(item.span(), format!("ports: {e}")))?;
                    project.ports.push(spec);
                }
            }
            "volumes" => {
                for (span, name, path) in p.string_table("volumes", v)? {
                    if !valid_volume_name(&name) {
                        return Err(p.err(
                            span,
                            format!("volumes: {name:?} is not a volume name (letters, digits, '.', '_', '-')"),
                        ));
                    }
                    if !is_guest_path(&path) || path == "/" {
                        return Err(p.err(
                            span,
                            format!("volumes.{name}: the mount path {path:?} must be absolute, and not /"),
                        ));
                    }
                    project.volumes.insert(name, path);
                }
            }
            _ => return Err(p.unknown(key, KEYS, "")),
        }
    }
    if !has_name {
        return Err(p.err(0..0, "name is missing (name = \"my-app\")"));
    }
    if !has_binary {
        return Err(
            p.err(0..0, "binary is missing (binary = \"path/to/program\", binary = { cargo = \"PACKAGE\" }, or from = \"oci-archive:app.tar\")")
        );
    }
    Ok(project)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(src: &str) -> Result<Project, String> {
        parse(src, "Kiln.toml", PathBuf::from("/p")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_parses() {
        let p = parsed(
            r#"
name = "web"
binary = { cargo = "server", bin = "web" }
args = ["--port", "80"]
env = { GREETING = "hi", LANG = "C" }
files = { "conf/app.toml" = "/etc/app.toml" }
dirs = { static = "/srv/static" }
memory = "128M"
cpus = 2
ports = ["8080:80", "127.0.0.1:5353:53/udp"]
volumes = { data = "/data" }
"#,
        )
        .unwrap();
        assert_eq!(p.name, "web");
        assert_eq!(p.binary, Binary::Cargo { package: "server".into(), bin: Some("web".into()) });
        assert_eq!(p.args, ["--port", "80"]);
        assert_eq!(p.env["GREETING"], "hi");
        assert_eq!(p.files["conf/app.toml"], "/etc/app.toml");
        assert_eq!(p.dirs["static"], "/srv/static");
        assert_eq!((p.memory, p.cpus), (128 << 20, 2));
        assert_eq!(p.ports.len(), 2);
        assert_eq!(p.volumes["data"], "/data");
        let minimal = parsed("name = \"hello\"\nbinary = \"hello\"\n").unwrap();
        assert_eq!((minimal.memory, minimal.cpus), (DEFAULT_MEMORY, 1));
        assert_eq!(minimal.binary, Binary::Path("hello".into()));
        let container = parsed("name = \"a\"\nfrom = \"docker-archive:app.tar\"\n").unwrap();
        assert_eq!(container.binary, Binary::Container("docker-archive:app.tar".into()));
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let base = "name = \"web\"\nbinary = \"app\"\n";
        let err = |extra: &str| parsed(&format!("{base}{extra}")).unwrap_err();
        assert_eq!(err("memroy = \"1G\"\n"), "Kiln.toml:3: unknown key \"memroy\" — did you mean \"memory\"?");
        assert_eq!(err("\n\nport = [\"80:80\"]\n"), "Kiln.toml:5: unknown key \"port\" — did you mean \"ports\"?");
        assert!(err("colour = 1\n").starts_with("Kiln.toml:3: unknown key \"colour\" (known keys: name, binary"));
        assert_eq!(
            err("cpus = 0\n"),
            "Kiln.toml:3: cpus must be a whole number from 1 to 64".replace("64", &kiln_vmm::vm::MAX_VCPUS.to_string())
        );
        assert!(err("memory = \"lots\"\n").starts_with("Kiln.toml:3: memory: 'lots' is not a size"));
        assert!(err("args = [1]\n").starts_with("Kiln.toml:3: args[..] must be a string, not an integer"));
        assert!(err("files = { a = \"etc/a\" }\n").contains("must be absolute"));
        assert!(err("ports = [\"http\"]\n").starts_with("Kiln.toml:3: ports:"));
        assert!(err("volumes = { \"a b\" = \"/x\" }\n").contains("not a volume name"));
        assert!(err("[binary]\ncargo = \"x\"\n").starts_with("Kiln.toml:"), "a duplicate key is a syntax error");
        assert_eq!(
            parsed("name = \"web\"\nbinary = { crate = \"x\" }\n").unwrap_err(),
            "Kiln.toml:2: unknown key \"crate\" in binary (known keys in binary: cargo, bin)"
        );
        assert!(parsed("name = \"Web\"\nbinary = \"a\"\n").unwrap_err().starts_with("Kiln.toml:1: name \"Web\""));
        assert!(parsed("binary = \"a\"\n").unwrap_err().contains("name is missing"));
        assert!(parsed("name = \"a\"\n").unwrap_err().contains("binary is missing"));
        assert!(parsed("name = \"a\"\nbinary = \n").unwrap_err().starts_with("Kiln.toml:2: "));
        assert_eq!(
            err("from = \"oci:img\"\n"),
            "Kiln.toml:3: binary and from exclude each other: the program is one or the other"
        );
        assert!(parsed("name = \"a\"\nfrom = \"app.tar\"\n")
            .unwrap_err()
            .starts_with("Kiln.toml:2: from \"app.tar\" names no container image"));
    }

    /// Every prefix of a full file, and the file with each byte replaced by characters that break TOML: an error or
    /// a project, never a panic (the parser is fed user files).
    #[test]
    fn damaged_files_give_errors_not_panics() {
        let full = "name = \"web\"\nbinary = { cargo = \"server\" }\nargs = [\"a\"]\nenv = { A = \"1\" }\n\
                    files = { \"a\" = \"/a\" }\nmemory = 1048576\ncpus = 2\nports = [\"80:80\"]\nvolumes = { d = \"/d\" }\n";
        for end in 0..=full.len() {
            let _ = parse(&full[..end], "Kiln.toml", PathBuf::new());
        }
        for at in 0..full.len() {
            for c in ["\"", "[", "{", "=", "\n", "0", "é", "-"] {
                let damaged = format!("{}{c}{}", &full[..at], &full[at + 1..]);
                if let Err(KilnTomlError::At { line, .. }) = parse(&damaged, "Kiln.toml", PathBuf::new()) {
                    assert!((1..=damaged.lines().count() + 1).contains(&line), "line {line} of {damaged:?}");
                }
            }
        }
    }

    #[test]
    fn workdir_is_an_absolute_path() {
        let base = "name = \"web\"\nbinary = \"app\"\n";
        assert_eq!(parsed(&format!("{base}workdir = \"/srv/app\"\n")).unwrap().workdir.as_deref(), Some("/srv/app"));
        assert_eq!(parsed(base).unwrap().workdir, None);
        assert_eq!(
            parsed(&format!("{base}workdir = \"srv\"\n")).unwrap_err(),
            "Kiln.toml:3: workdir \"srv\" must be an absolute path"
        );
    }

    #[test]
    fn a_span_inside_a_character_still_has_a_line() {
        let p = Parser { src: "a = 1\né = 2\n", file: "Kiln.toml" };
        assert_eq!(p.err(7..8, "x").to_string(), "Kiln.toml:2: x");
        assert_eq!(p.err(99..99, "x").to_string(), "Kiln.toml:3: x");
    }

    #[test]
    fn suggestions_are_close_keys_only() {
        assert_eq!(closest("memroy", KEYS), Some("memory"));
        assert_eq!(closest("cpu", KEYS), Some("cpus"));
        assert_eq!(closest("enviroment", KEYS), None);
        assert_eq!(closest("volume", KEYS), Some("volumes"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
