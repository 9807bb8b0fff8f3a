//! Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`, as Docker's): whether an instance that
//! ended is started again. kilnd applies them (an instance process of `kiln run -d` has no one to restart it); the
//! record keeps the policy and how many restarts it made.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RestartPolicy {
    /// Never (the default).
    #[default]
    No,
    /// When the program ends with a code other than 0 (a crash too), at most `max` times if given.
    OnFailure { max: Option<u32> },
    /// Whenever it ends, unless it was stopped (`kiln stop`, `kill`, `rm`); also when kilnd starts again.
    Always,
    /// As `always`, except that an instance stopped by the user is not started when kilnd starts again.
    UnlessStopped,
}

impl RestartPolicy {
    /// Whether an instance that ended with `code`, after `restarts` restarts, starts again. `stopped`: the user
    /// stopped it (no policy restarts that).
    pub fn restarts(self, code: i32, restarts: u32, stopped: bool) -> bool {
        match self {
            _ if stopped => false,
            RestartPolicy::No => false,
            RestartPolicy::OnFailure { max } => code != 0 && max.is_none_or(|max| restarts < max),
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        }
    }

    /// Whether an instance that was running when its kilnd ended starts on the next kilnd.
    pub fn restarts_with_kilnd(self) -> bool {
        matches!(self, RestartPolicy::Always | RestartPolicy::UnlessStopped)
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => Ok(RestartPolicy::OnFailure { max: None }),
            _ => match s.strip_prefix("on-failure:").map(str::parse::<u32>) {
                Some(Ok(max)) if max > 0 => Ok(RestartPolicy::OnFailure { max: Some(max) }),
                _ => Err(format!(
                    "'{s}' is not a restart policy: use no, on-failure[:N] (N ≥ 1), always or unless-stopped"
                )),
            },
        }
    }
}

impl TryFrom<String> for RestartPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<RestartPolicy> for String {
    fn from(p: RestartPolicy) -> String {
        p.to_string()
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => write!(f, "no"),
            RestartPolicy::OnFailure { max: None } => write!(f, "on-failure"),
            RestartPolicy::OnFailure { max: Some(max) } => write!(f, "on-failure:{max}"),
            RestartPolicy::Always => write!(f, "always"),
            RestartPolicy::UnlessStopped => write!(f, "unless-stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RestartPolicy;

    #[test]
    fn policies_parse_print_and_decide() {
        for text in ["no", "on-failure", "on-failure:3", "always", "unless-stopped"] {
            assert_eq!(text.parse::<RestartPolicy>().unwrap().to_string(), text);
        }
        for bad in ["", "sometimes", "on-failure:", "on-failure:0", "on-failure:-1", "always:3"] {
            assert!(bad.parse::<RestartPolicy>().is_err(), "{bad}");
        }
        let three: RestartPolicy = "on-failure:3".parse().unwrap();
        assert!(three.restarts(1, 2, false) && !three.restarts(1, 3, false) && !three.restarts(0, 0, false));
        assert!(RestartPolicy::Always.restarts(0, 100, false) && !RestartPolicy::Always.restarts(1, 0, true));
        assert!(!RestartPolicy::No.restarts(1, 0, false));
        assert!(!three.restarts_with_kilnd() && RestartPolicy::UnlessStopped.restarts_with_kilnd());
        let json = serde_json::to_string(&three).unwrap();
        assert_eq!(json, "\"on-failure:3\"");
        assert_eq!(serde_json::from_str::<RestartPolicy>(&json).unwrap(), three);
    }
}
