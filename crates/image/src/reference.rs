//! `NAME[:TAG]`, as users name images: lower-case letters, digits, `.`, `_`, `-` and `/`; the tag defaults to
//! `latest`.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    pub name: String,
    pub tag: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("{0:?} is not an image name: use at most {MAX_NAME} lower-case letters, digits, '.', '_', '-' and '/', starting with a letter or digit")]
    Name(String),
    #[error("{0:?} is not a tag: use letters, digits, '.', '_' and '-', at most 128")]
    Tag(String),
}

pub const DEFAULT_TAG: &str = "latest";

/// The longest name: a tag is stored as the file `NAME:TAG`, which must fit a file name (255 bytes) with the
/// longest tag (128).
pub const MAX_NAME: usize = 126;

fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.split('/').all(|part| {
            part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        })
}

fn valid_tag(tag: &str) -> bool {
    (1..=128).contains(&tag.len())
        && !tag.starts_with(['.', '-'])
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Reference {
    pub fn new(name: &str, tag: &str) -> Result<Reference, ReferenceError> {
        if !valid_name(name) {
            return Err(ReferenceError::Name(name.to_string()));
        }
        if !valid_tag(tag) {
            return Err(ReferenceError::Tag(tag.to_string()));
        }
        Ok(Reference { name: name.to_string(), tag: tag.to_string() })
    }

    /// Whether `s` is a valid image name (no tag), for `Kiln.toml`'s `name`.
    pub fn is_valid_name(s: &str) -> bool {
        valid_name(s)
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rsplit_once(':') {
            Some((name, tag)) => Reference::new(name, tag),
            None => Reference::new(s, DEFAULT_TAG),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        assert_eq!("web".parse(), Ok(Reference { name: "web".into(), tag: "latest".into() }));
        assert_eq!("team/web:1.2".parse::<Reference>().unwrap().to_string(), "team/web:1.2");
        assert!(matches!("Web".parse::<Reference>(), Err(ReferenceError::Name(_))));
        assert!(matches!("web:".parse::<Reference>(), Err(ReferenceError::Tag(_))));
        assert!(matches!("../etc:x".parse::<Reference>(), Err(ReferenceError::Name(_))));
        assert!(matches!("a//b".parse::<Reference>(), Err(ReferenceError::Name(_))));
        assert!(matches!("web:../x".parse::<Reference>(), Err(ReferenceError::Tag(_))));
        let longest = Reference::new(&"n".repeat(MAX_NAME), &"t".repeat(128)).unwrap();
        assert_eq!(longest.to_string().len(), 255, "a tag's file name fits NAME_MAX");
        assert!(matches!(Reference::new(&"n".repeat(MAX_NAME + 1), "t"), Err(ReferenceError::Name(_))));
    }
}
