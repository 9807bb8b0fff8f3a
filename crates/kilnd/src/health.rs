//! An instance's health check, run from the host while its VM runs: a thread that probes the published port every
//! interval (an HTTP GET, or a TCP connect, within the timeout) and records the verdict when it changes: `retries`
//! failures in a row make the instance unhealthy, one success healthy.

use kiln_image::health::{Health, HealthCheck, Probe};
use kiln_image::instance::Instances;
use kiln_image::Store;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Stops the checker when dropped (at the end of the VM's run).
pub struct Checker {
    _stop: Sender<()>,
}

/// The last verdict of every running instance's check, in memory, for the services' balancers and controllers
/// (which must not read a record file per connection).
#[derive(Default)]
pub struct Verdicts(Mutex<HashMap<String, Health>>);

impl Verdicts {
    pub fn get(&self, id: &str) -> Option<Health> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(id).copied()
    }

    fn set(&self, id: &str, verdict: Health) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), verdict);
    }

    /// The run ended: no verdict until the next run's checker gives one.
    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Starts checking instance `id` of the store at `store_root`, through the host address `host_ip` (the published
/// port's; unspecified means the loopback).
pub fn start(
    store_root: PathBuf,
    verdicts: Arc<Verdicts>,
    id: String,
    check: HealthCheck,
    probe: Probe,
    host_ip: IpAddr,
) -> Checker {
    let (stop, stopped) = channel::<()>();
    let host_ip = match host_ip {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    verdicts.set(&id, Health::Starting);
    let spawned = std::thread::Builder::new().name("health".into()).spawn(move || {
        let store = Store::new(store_root);
        let (interval, timeout) = (Duration::from_millis(check.interval_ms), Duration::from_millis(check.timeout_ms));
        let (mut failures, mut verdict) = (0, Health::Starting);
        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
            let next = match probe_once(&probe, host_ip, timeout) {
                true => {
                    failures = 0;
                    Health::Healthy
                }
                false => {
                    failures += 1;
                    if failures >= check.retries {
                        Health::Unhealthy
                    } else {
                        verdict
                    }
                }
            };
            if next != verdict {
                verdict = next;
                // The run may have ended meanwhile: then the record is the runner's to write.
                if stopped.try_recv() != Err(std::sync::mpsc::TryRecvError::Empty) {
                    return;
                }
                verdicts.set(&id, verdict);
                let _ = Instances::new(&store).update(&id, |i| i.health = Some(verdict));
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start a health-check thread: {e}");
    }
    Checker { _stop: stop }
}

/// The check's probe and the host address of the published TCP port it goes to; why not, in words.
pub fn published_for(check: &HealthCheck, spec: &kiln_launch::LaunchSpec) -> Result<(Probe, IpAddr), String> {
    let probe = check.probe()?;
    let port = match &probe {
        Probe::Http { port, .. } | Probe::Tcp { port } => *port,
    };
    let published = spec.network.published();
    let forward = published.iter().find(|f| f.host_port == port && f.proto == kiln_usernet::Proto::Tcp);
    match forward {
        Some(f) => Ok((probe, f.host_ip)),
        None => Err(format!("host port {port} is not published over TCP (publish it: \"publish\": [\"{port}:PORT\"])")),
    }
}

/// One probe: whether it succeeded within `timeout`.
fn probe_once(probe: &Probe, ip: IpAddr, timeout: Duration) -> bool {
    let port = match probe {
        Probe::Http { port, .. } | Probe::Tcp { port } => *port,
    };
    let Ok(stream) = TcpStream::connect_timeout(&SocketAddr::new(ip, port), timeout) else { return false };
    let Probe::Http { path, .. } = probe else { return true };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: kilnd-health\r\n\r\n");
    if (&stream).write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut status = String::new();
    // At most one line of 256 bytes: the status line is all a verdict needs.
    if BufReader::new(std::io::Read::take(&stream, 256)).read_line(&mut status).is_err() {
        return false;
    }
    let code = status.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
    status.starts_with("HTTP/") && code.is_some_and(|c| (200..400).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn probes_see_answers_statuses_and_silence() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for reply in ["HTTP/1.0 200 OK\r\n\r\n", "HTTP/1.0 503 Busy\r\n\r\n", "garbage\r\n"] {
                let (mut c, _) = listener.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf);
                c.write_all(reply.as_bytes()).unwrap();
            }
            // Then one that never answers.
            let (_c, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let http = Probe::Http { port, path: "/h".into() };
        let t = Duration::from_millis(100);
        assert!(probe_once(&http, ip, t));
        assert!(!probe_once(&http, ip, t), "503");
        assert!(!probe_once(&http, ip, t), "not HTTP");
        assert!(!probe_once(&http, ip, t), "silence");
        server.join().unwrap();
        assert!(!probe_once(&Probe::Tcp { port }, ip, t), "nothing listens any more");
    }
}
