//! `-p` port forwards: the `PortForward` type and its parser for docker's syntax
//! (`8080:80`, `127.0.0.1:8080:80`, `8080:80/udp`, `[::1]:8080:80/tcp`).
//! Parsing only; binding the host sockets happens in `UserNet::new`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// The transport a forward carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One `-p` forward: connections/datagrams to `host_ip:host_port` on the host reach `guest_port` in the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub proto: Proto,
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub guest_port: u16,
}

impl fmt::Display for PortForward {
    /// Prints the forward back in `-p` syntax, e.g. `127.0.0.1:8080:80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            IpAddr::V4(ip) if ip.is_unspecified() => {}
            IpAddr::V4(ip) => write!(f, "{ip}:")?,
            IpAddr::V6(ip) => write!(f, "[{ip}]:")?,
        }
        write!(f, "{}:{}/{}", self.host_port, self.guest_port, self.proto)
    }
}

/// A `-p` spec that does not parse; the message names the spec and the one thing wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("-p {spec}: {problem}")]
pub struct ForwardParseError {
    pub spec: String,
    pub problem: String,
}

const SYNTAX: &str = "expected [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp], e.g. 8080:80";

impl FromStr for PortForward {
    type Err = ForwardParseError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fail = |problem: String| ForwardParseError { spec: spec.to_string(), problem };
        if spec.trim().is_empty() {
            return Err(fail(format!("the port forward is empty; {SYNTAX}")));
        }
        let (body, proto) = match spec.rsplit_once('/') {
            Some((body, p)) => match p.to_ascii_lowercase().as_str() {
                "tcp" => (body, Proto::Tcp),
                "udp" => (body, Proto::Udp),
                "" => return Err(fail("the protocol after '/' is missing (tcp or udp)".into())),
                _ => return Err(fail(format!("{p} is not a protocol (tcp or udp)"))),
            },
            None => (spec, Proto::Tcp),
        };
        // A bracketed IPv6 host address comes first and may itself contain ':'.
        let (host_ip, rest) = if let Some(after) = body.strip_prefix('[') {
            let Some((ip, rest)) = after.split_once(']') else {
                return Err(fail("the '[' before the IPv6 address is never closed with ']'".into()));
            };
            let ip: IpAddr = ip.parse().map_err(|_| fail(format!("{ip} is not an IP address")))?;
            let Some(rest) = rest.strip_prefix(':') else {
                return Err(fail(format!("the host port after [{ip}] is missing; {SYNTAX}")));
            };
            (Some(ip), rest)
        } else {
            (None, body)
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (host_ip, host_port, guest_port) = match (host_ip, parts.as_slice()) {
            (_, [single]) if !single.is_empty() => {
                return Err(fail(format!("the guest port is missing; {SYNTAX}")));
            }
            (Some(ip), [h, g]) => (ip, *h, *g),
            (None, [h, g]) => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), *h, *g),
            (None, [ip, h, g]) => {
                let ip: IpAddr = ip.parse().map_err(|_| {
                    if ip.is_empty() {
                        fail("the host IP before the first ':' is empty".into())
                    } else if ip.parse::<std::net::Ipv6Addr>().is_err() && ip.contains('.') {
                        fail(format!("{ip} is not an IP address"))
                    } else {
                        fail(format!(
                            "{ip} is not an IP address (write IPv6 addresses in brackets, e.g. [::1]:8080:80)"
                        ))
                    }
                })?;
                (ip, *h, *g)
            }
            (_, []) | (_, [_]) => return Err(fail(format!("the host port is missing; {SYNTAX}"))),
            _ => return Err(fail(format!("too many ':'-separated parts (IPv6 addresses go in brackets); {SYNTAX}"))),
        };
        let host_port = parse_port(host_port, "host").map_err(&fail)?;
        let guest_port = parse_port(guest_port, "guest").map_err(&fail)?;
        Ok(PortForward { proto, host_ip, host_port, guest_port })
    }
}

fn parse_port(text: &str, which: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err(format!("the {which} port is missing; {SYNTAX}"));
    }
    if text.contains('-') {
        return Err(format!("{text} is a port range; ranges are not supported, give one {which} port"));
    }
    match text.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(format!("{text} is not a port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(spec: &str) -> PortForward {
        spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    fn err(spec: &str) -> String {
        match spec.parse::<PortForward>() {
            Ok(f) => panic!("{spec} parsed as {f:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_docker_syntax() {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert_eq!(ok("8080:80"), PortForward { proto: Proto::Tcp, host_ip: any, host_port: 8080, guest_port: 80 });
        let f = ok("127.0.0.1:8080:80");
        assert_eq!(f.host_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((f.host_port, f.guest_port, f.proto), (8080, 80, Proto::Tcp));
        assert_eq!(ok("8080:80/udp").proto, Proto::Udp);
        assert_eq!(ok("53:53/UDP").proto, Proto::Udp);
        let f = ok("[::1]:8080:80/tcp");
        assert_eq!(f.host_ip, "::1".parse::<IpAddr>().unwrap());
        assert_eq!((f.host_port, f.guest_port), (8080, 80));
        assert_eq!(ok("65535:1").host_port, 65535);
    }

    #[test]
    fn displays_back_in_p_syntax() {
        assert_eq!(ok("8080:80").to_string(), "8080:80/tcp");
        assert_eq!(ok("127.0.0.1:53:53/udp").to_string(), "127.0.0.1:53:53/udp");
        assert_eq!(ok("[::1]:1:2").to_string(), "[::1]:1:2/tcp");
    }

    #[test]
    fn rejects_bad_specs_with_one_line_reasons() {
        assert!(err("8080").starts_with("-p 8080: the guest port is missing"));
        assert!(err("8080:").starts_with("-p 8080:: the guest port is missing"));
        assert!(err(":80").starts_with("-p :80: the host port is missing"));
        assert_eq!(err("99999:80"), "-p 99999:80: 99999 is not a port (1-65535)");
        assert_eq!(err("8080:0"), "-p 8080:0: 0 is not a port (1-65535)");
        assert_eq!(err("8080:http"), "-p 8080:http: http is not a port (1-65535)");
        assert_eq!(err("8080:80/sctp"), "-p 8080:80/sctp: sctp is not a protocol (tcp or udp)");
        assert!(err("8080:80/").contains("protocol after '/' is missing"));
        assert_eq!(err("1.2.3:8080:80"), "-p 1.2.3:8080:80: 1.2.3 is not an IP address");
        assert!(err("::1:8080:80").contains("too many"));
        assert!(err("[::1:8080:80").contains("never closed"));
        assert!(err("[::1]").contains("host port"));
        assert!(err("8000-8010:80").contains("ranges are not supported"));
        assert!(err("").contains("empty"));
        for spec in ["8080", "99999:80", "a:b:c:d", "[x]:1:2", "1:2/udpx", "/", ":", "[", "]:"] {
            let e = err(spec);
            assert!(!e.contains('\n'), "{e}");
            assert!(e.starts_with(&format!("-p {spec}: ")), "{e}");
        }
    }
}
