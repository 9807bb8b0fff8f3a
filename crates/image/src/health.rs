//! Health checks (as `docker run --health-*`, but made from the host): an HTTP GET of a path, or a TCP connect, to
//! a port the instance publishes on the host, every `interval`; `retries` failures in a row make it unhealthy, one
//! success healthy again. kilnd runs them; the record keeps the check and the last verdict.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http:HOST_PORT/PATH` (healthy: a 2xx or 3xx status) or `tcp:HOST_PORT` (healthy: the connection opens).
    pub check: String,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_interval() -> u64 {
    30_000
}
fn default_timeout() -> u64 {
    5_000
}
fn default_retries() -> u32 {
    3
}

/// What a check probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Http { port: u16, path: String },
    Tcp { port: u16 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No verdict yet: fewer than `retries` probes have failed and none has succeeded.
    Starting,
    Healthy,
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Starting => "health: starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

impl HealthCheck {
    /// The probe, checked: a port, an absolute path, intervals and retries that make sense.
    pub fn probe(&self) -> Result<Probe, String> {
        let port = |s: &str| s.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| format!("'{s}' is not a port"));
        let probe = if let Some(rest) = self.check.strip_prefix("http:") {
            let (p, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if path.is_empty() || path.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control()) {
                return Err(format!("'{}' is not http:PORT/PATH", self.check));
            }
            Probe::Http { port: port(p)?, path: path.to_string() }
        } else if let Some(p) = self.check.strip_prefix("tcp:") {
            Probe::Tcp { port: port(p)? }
        } else {
            return Err(format!("'{}' is not http:PORT/PATH or tcp:PORT", self.check));
        };
        if self.interval_ms < 10 || self.timeout_ms < 10 {
            return Err("interval_ms and timeout_ms must be at least 10".into());
        }
        if self.retries == 0 {
            return Err("retries must be at least 1".into());
        }
        Ok(probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> HealthCheck {
        HealthCheck { check: s.into(), interval_ms: 1000, timeout_ms: 500, retries: 3 }
    }

    #[test]
    fn checks_are_http_or_tcp_to_a_port() {
        assert_eq!(check("http:8080/healthz").probe(), Ok(Probe::Http { port: 8080, path: "/healthz".into() }));
        assert_eq!(check("tcp:53").probe(), Ok(Probe::Tcp { port: 53 }));
        for bad in ["http:8080", "http:x/a", "http:0/a", "udp:53", "tcp:", "http:80/a b", "tcp:70000"] {
            assert!(check(bad).probe().is_err(), "{bad}");
        }
        assert!(HealthCheck { retries: 0, ..check("tcp:1") }.probe().is_err());
        assert!(HealthCheck { interval_ms: 0, ..check("tcp:1") }.probe().is_err());
        let parsed: HealthCheck = serde_json::from_str(r#"{"check":"tcp:80"}"#).unwrap();
        assert_eq!((parsed.interval_ms, parsed.timeout_ms, parsed.retries), (30_000, 5_000, 3));
    }
}
