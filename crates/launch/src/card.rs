//! The VM's network card for a resolved [`Network`]: a tap device, or the user-mode network with the ports
//! published from the host bound before the VM boots.

use crate::error::LaunchError;
use crate::network::{Addresses, Network};
use kiln_usernet::{BoundNet, Publisher, UserNet, UserNet6, UserNetConfig};
use kiln_vmm::virtio::net::Backend;
use kiln_vmm::virtio::tap::Tap;
use kiln_vmm::{NetConfig, Publish};

/// The user-mode network as the card's backend. Without `-p` it starts with the guest's first frame: a program that
/// never uses the network does not pay for its thread (a tenth of a `kiln run hello`).
enum UserBackend {
    /// Sockets bound, thread started when the VM runs (`set_waker`): after a jail has closed.
    Bound(Box<BoundNet>),
    Running(UserNet),
    Waiting(UserNetConfig, Option<Box<dyn Fn() + Send + Sync>>),
    Failed,
}

impl UserBackend {
    fn start(config: UserNetConfig, lazily: bool) -> Result<UserBackend, LaunchError> {
        Ok(if lazily {
            UserBackend::Waiting(config, None)
        } else {
            UserBackend::Bound(Box::new(UserNet::bind(config)?))
        })
    }

    fn running(&mut self) -> Option<&UserNet> {
        if let UserBackend::Waiting(..) = self {
            let UserBackend::Waiting(config, waker) = std::mem::replace(self, UserBackend::Failed) else {
                unreachable!("matched above")
            };
            match UserNet::new(config) {
                Ok(net) => {
                    if let Some(waker) = waker {
                        net.set_waker(waker);
                    }
                    *self = UserBackend::Running(net);
                }
                Err(e) => {
                    // The guest's first frame, long after launch: nobody to return an error to.
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stderr(), "kiln: the user-mode network did not start: {e}");
                }
            }
        }
        match self {
            UserBackend::Running(net) => Some(net),
            _ => None,
        }
    }
}

impl Backend for UserBackend {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        if let Some(net) = self.running() {
            net.send(frame);
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        Ok(match self {
            UserBackend::Running(net) => net.recv(buf),
            _ => None,
        })
    }

    fn ready_fd(&self) -> std::os::fd::RawFd {
        match self {
            UserBackend::Running(net) => net.ready_fd(),
            _ => -1,
        }
    }

    fn set_waker(&mut self, wake: Box<dyn Fn() + Send + Sync>) -> bool {
        match self {
            UserBackend::Running(net) => net.set_waker(wake),
            UserBackend::Waiting(_, waker) => *waker = Some(wake),
            UserBackend::Bound(_) => {
                let UserBackend::Bound(bound) = std::mem::replace(self, UserBackend::Failed) else {
                    unreachable!("matched above")
                };
                match bound.start() {
                    Ok(net) => {
                        net.set_waker(wake);
                        *self = UserBackend::Running(net);
                    }
                    Err(e) => {
                        use std::io::Write as _;
                        let _ = writeln!(std::io::stderr(), "kiln: the user-mode network did not start: {e}");
                    }
                }
            }
            UserBackend::Failed => {}
        }
        true
    }
}

/// No wire, so no need for Ethernet's 1500: bigger frames cost fewer wake-ups and exits per byte. Echoing 100 MiB
/// through -p took 0.7 s at 16,000 and 0.85 s at 65,520 (one segment then fills a 64 KiB window); 1,500 made 5x the
/// exits.
const USER_MTU: u16 = 16000;

/// The network card for the VM, or None for no network. Host ports for `-p` are bound here, before the VM boots.
pub fn card(network: &Network) -> Result<Option<NetConfig>, LaunchError> {
    let (addresses, publish, publish_listens) = match network {
        Network::None => return Ok(None),
        Network::User { addresses, publish, publish_listens } => (addresses, publish.as_slice(), *publish_listens),
        Network::Tap { addresses, .. } => (addresses, &[][..], false),
    };
    let &Addresses { ipv4, prefix_len, gateway, ipv6, gateway6, dns } = addresses;
    let mac = match network {
        Network::Tap { mac: Some(mac), .. } => *mac,
        _ => random_mac()?,
    };
    let (backend, mtu, publisher): (Box<dyn Backend>, u16, Option<Publish>) = match network {
        Network::Tap { device, .. } => {
            let tap = Tap::attach(device).map_err(|e| LaunchError::Tap(device.clone(), e))?;
            (Box::new(tap), Tap::mtu(device), None)
        }
        _ => {
            let ipv6 = match (ipv6, gateway6, addresses.forwarder6()) {
                (Some((guest_ip, prefix_len)), Some(gateway), Some(dns)) => {
                    Some(UserNet6 { guest_ip, gateway, dns, prefix_len })
                }
                _ => None,
            };
            let config = UserNetConfig {
                guest_mac: mac,
                guest_ip: ipv4,
                gateway,
                prefix_len,
                dns: addresses.forwarder(),
                dns_upstream: dns,
                forwards: publish.to_vec(),
                mtu: USER_MTU,
                ipv6,
            };
            // Started lazily, the relay would be a thread a vCPU thread makes, under the vCPU's filter for life; so
            // with seccomp it starts as the VM runs.
            // Publishing asks the relay's thread, which must be there to answer from the first listen on.
            let lazily = publish.is_empty() && !publish_listens && kiln_seccomp::mode() == kiln_seccomp::Mode::Off;
            let backend = UserBackend::start(config, lazily)?;
            let publisher = match (&backend, publish_listens) {
                (UserBackend::Bound(bound), true) => Some(publisher(bound.publisher())),
                _ => None,
            };
            (Box::new(backend), USER_MTU, publisher)
        }
    };
    let routes = match network {
        Network::Tap { routes, .. } => routes.iter().map(|r| r.boot_info()).collect(),
        _ => Vec::new(),
    };
    Ok(Some(NetConfig { backend, publish: publisher, mac, ipv4, prefix_len, gateway, ipv6, gateway6, mtu, routes }))
}

/// The card's [`Publish`]: the user-mode network's publisher, its errors as errnos.
fn publisher(publisher: Publisher) -> Publish {
    Box::new(move |port| {
        publisher.publish(port).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => libc::ETIMEDOUT,
            _ => e.raw_os_error().unwrap_or(libc::EIO),
        })
    })
}

/// A random locally administered unicast MAC, so that VMs on one bridge never share one.
fn random_mac() -> Result<[u8; 6], LaunchError> {
    let mut mac = [0u8; 6];
    // SAFETY: the pointer and length describe `mac`.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(LaunchError::Random(std::io::Error::last_os_error()));
    }
    mac[0] = (mac[0] & 0xfc) | 0x02;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{resolve, NetMode, NetworkFlags, DEFAULT_IP6};
    use std::net::Ipv4Addr;

    fn network(mode: NetMode) -> Network {
        resolve(&NetworkFlags { mode, ..Default::default() }).unwrap()
    }

    #[test]
    fn cards_follow_the_network() {
        assert!(card(&network(NetMode::None)).unwrap().is_none());
        let err = crate::error::chain(&card(&network(NetMode::Tap("kilnnosuch0".into()))).unwrap_err());
        assert!(err.contains("--net tap:kilnnosuch0") && err.contains("no such network device"), "{err}");
        let user = card(&network(NetMode::User)).unwrap().unwrap();
        assert_eq!((user.ipv4, user.gateway), (Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(user.ipv6, Some(DEFAULT_IP6));
    }

    #[test]
    fn macs_are_local_unicast() {
        let mac = random_mac().unwrap();
        assert_eq!(mac[0] & 3, 2);
    }
}
