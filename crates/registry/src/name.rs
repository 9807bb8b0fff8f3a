//! `REGISTRY/REPOSITORY[:TAG|@sha256:DIGEST]`, as `kiln push` and `kiln pull` name a place on a registry.

use crate::RegistryError;
use std::fmt;

const DOCKER_HUB: &str = "docker.io";

/// `HOST[:PORT]`: DNS labels of letters, digits and inner '-', separated by '.'.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// One component of a repository path: lower-case letters and digits, with '.', '_', '__' or dashes between them.
fn valid_component(component: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut separator = String::new();
    let mut previous_alnum = false;
    for c in component.chars() {
        if alnum(c) {
            if !previous_alnum && !separator.is_empty() {
                let dashes = separator.chars().all(|s| s == '-');
                if !(dashes || separator == "." || separator == "_" || separator == "__") {
                    return false;
                }
            }
            separator.clear();
            previous_alnum = true;
        } else if matches!(c, '.' | '_' | '-') && (previous_alnum || !separator.is_empty()) {
            separator.push(c);
            previous_alnum = false;
        } else {
            return false;
        }
    }
    previous_alnum
}

#[derive(Clone, Debug)]
pub struct RemoteName {
    pub(crate) inner: oci_client::Reference,
}

impl RemoteName {
    /// Parses the distribution spec's reference grammar by hand: oci-spec's parser compiles a regular expression
    /// with Unicode classes, which cost a third of a second of every `kiln push/pull` here (measured with strace:
    /// 110 mmaps before the first syscall of the command), more than the whole push of a 2 MiB image.
    pub fn parse(s: &str) -> Result<RemoteName, RegistryError> {
        let bad = |why: &str| RegistryError::BadReference(s.to_string(), why.to_string());
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => {
                digest.parse::<kiln_image::Digest>().map_err(|e| bad(&e.to_string()))?;
                (rest, Some(digest.to_string()))
            }
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(at) if !rest[at..].contains('/') => (&rest[..at], Some(&rest[at + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
            if tag.is_empty()
                || tag.len() > 128
                || !tag.starts_with(word)
                || !tag.chars().all(|c| word(c) || c == '.' || c == '-')
            {
                return Err(bad("a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ if name.contains('/') => (DOCKER_HUB.to_string(), name.to_string()),
            _ => (DOCKER_HUB.to_string(), format!("library/{name}")),
        };
        if !valid_registry(&registry) {
            return Err(bad("the registry is HOST[:PORT]"));
        }
        if repository.len() > 255 || !repository.split('/').all(valid_component) {
            return Err(bad("a repository is lower-case letters and digits, separated by '.', '_', '__', '-' or '/'"));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(kiln_image::reference::DEFAULT_TAG),
            _ => tag,
        };
        let inner = match (tag, digest) {
            (Some(tag), Some(digest)) => {
                oci_client::Reference::with_tag_and_digest(registry, repository, tag.to_string(), digest)
            }
            (Some(tag), None) => oci_client::Reference::with_tag(registry, repository, tag.to_string()),
            (None, Some(digest)) => oci_client::Reference::with_digest(registry, repository, digest),
            (None, None) => unreachable!("a tag is the default"),
        };
        Ok(RemoteName { inner })
    }

    /// The registry as given (`127.0.0.1:5000`, `ghcr.io`), Docker Hub as `docker.io`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The same repository at `digest` (a manifest's).
    pub(crate) fn at_digest(&self, digest: &str) -> RemoteName {
        RemoteName {
            inner: oci_client::Reference::with_digest(
                self.inner.registry().to_string(),
                self.inner.repository().to_string(),
                digest.to_string(),
            ),
        }
    }

    /// The name `kiln pull` gives the image in the local store: the repository (without the registry, whose port
    /// no image name can hold) and the tag, or for a pull by digest the tag `sha256-` and its first 12 hex digits.
    pub fn local_reference(&self) -> Result<kiln_image::Reference, RegistryError> {
        let tag = match (self.inner.digest(), self.inner.tag()) {
            (_, Some(tag)) => tag.to_string(),
            (Some(digest), None) => format!("sha256-{}", &digest["sha256:".len()..][..12]),
            (None, None) => kiln_image::reference::DEFAULT_TAG.to_string(),
        };
        kiln_image::Reference::new(self.inner.repository(), &tag)
            .map_err(|e| RegistryError::BadReference(self.to_string(), e.to_string()))
    }
}

impl fmt::Display for RemoteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.whole())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_map_to_local_names() {
        let n = RemoteName::parse("127.0.0.1:5000/team/web:1.2").unwrap();
        assert_eq!((n.registry(), n.repository(), n.tag()), ("127.0.0.1:5000", "team/web", Some("1.2")));
        assert_eq!(n.local_reference().unwrap().to_string(), "team/web:1.2");
        let d = format!("sha256:{}", "ab".repeat(32));
        let n = RemoteName::parse(&format!("localhost:5000/web@{d}")).unwrap();
        assert_eq!(n.digest(), Some(d.as_str()));
        assert_eq!(n.local_reference().unwrap().to_string(), "web:sha256-abababababab");
        assert_eq!(RemoteName::parse("ghcr.io/a/b").unwrap().local_reference().unwrap().to_string(), "a/b:latest");
        assert!(RemoteName::parse("localhost:5000/Web").is_err());
        let hub = RemoteName::parse("alpine:3.19").unwrap();
        assert_eq!((hub.registry(), hub.repository(), hub.tag()), ("docker.io", "library/alpine", Some("3.19")));
        let n = RemoteName::parse("localhost/a__b.c-d--e/f").unwrap();
        assert_eq!((n.registry(), n.repository(), n.tag()), ("localhost", "a__b.c-d--e/f", Some("latest")));
        for bad in [
            "",
            "reg.example/",
            "reg.example/a//b",
            "reg.example/a_",
            "reg.example/a___b",
            "reg.example/a:",
            "reg.example/a:-x",
            "reg.example:x/a",
            "-reg.example/a",
            "reg.example/a@sha256:ab",
        ] {
            assert!(RemoteName::parse(bad).is_err(), "{bad}");
        }
        assert!(RemoteName::parse("localhost:5000/web@sha256:abc").is_err());
    }
}
