//! `sha256:<64 hex digits>`: the name of a blob in the store, and of an image (its manifest's digest).

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a digest (sha256: and 64 hex digits)")]
pub struct DigestError(pub String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest { hex: Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect() }
    }

    /// The 64 hex digits, as the blob's file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `kiln images` shows ids.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Digest { hex: hex.to_string() })
        } else {
            Err(DigestError(s.to_string()))
        }
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_and_reject_junk() {
        let d = Digest::of(b"abc");
        assert_eq!(d.to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d.clone()));
        assert_eq!(d.short(), "ba7816bf8f01");
        assert!("sha256:ABC".parse::<Digest>().is_err());
        assert!("md5:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".parse::<Digest>().is_err());
        assert!(format!("sha256:{}", "0".repeat(63)).parse::<Digest>().is_err());
    }
}
