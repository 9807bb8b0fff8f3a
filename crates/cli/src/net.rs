//! `kiln run`'s network options: which backend the VM's network card uses (`--net`), the address the program gets
//! (`--ip`, `--gateway`), and the ports published from the host (`-p`).

use anyhow::{anyhow, bail, Context, Result};
use kiln_usernet::{PortForward, UserNet, UserNet6, UserNetConfig};
use kiln_vmm::virtio::net::Backend;
use kiln_vmm::virtio::tap::Tap;
use kiln_vmm::NetConfig;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `--net`: where the VM's network card leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// The user-mode network (the default): no root needed; outbound connections go through host sockets, and `-p`
    /// publishes the program's ports on the host.
    User,
    /// No card: the program has the loopback only.
    None,
    /// An existing tap device on the host.
    Tap(String),
}

pub fn parse_net(s: &str) -> Result<NetMode, String> {
    match s {
        "user" => Ok(NetMode::User),
        "none" => Ok(NetMode::None),
        _ => match s.strip_prefix("tap:") {
            Some(name) if !name.is_empty() => Ok(NetMode::Tap(name.to_string())),
            _ => Err(format!("'{s}' is not a network: use user, none or tap:NAME")),
        },
    }
}

/// `-p [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`.
pub fn parse_publish(s: &str) -> Result<PortForward, String> {
    s.parse().map_err(|e: kiln_usernet::ForwardParseError| e.problem)
}

/// The user-mode network as the card's backend. Without `-p` it starts with the guest's first frame: a program that
/// never uses the network does not pay for its thread (a tenth of a `kiln run hello`).
enum UserBackend {
    Running(UserNet),
    Waiting(UserNetConfig, Option<Box<dyn Fn() + Send + Sync>>),
    Failed,
}

impl UserBackend {
    fn start(config: UserNetConfig, lazily: bool) -> Result<UserBackend> {
        Ok(if lazily { UserBackend::Waiting(config, None) } else { UserBackend::Running(UserNet::new(config)?) })
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
                Err(e) => errln!("kiln: the user-mode network did not start: {e}"),
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
            UserBackend::Failed => {}
        }
        true
    }
}

/// The user-mode network's addresses: slirp's plan (10.0.2.15/24, gateway .2, DNS .3) unless `--ip`/`--gateway`
/// say otherwise.
const USER_GATEWAY: u32 = 2;
const USER_DNS: u32 = 3;
/// No wire, so no need for Ethernet's 1500: bigger frames cost fewer wake-ups and exits per byte. Echoing 100 MiB
/// through -p took 0.7 s at 16,000 and 0.85 s at 65,520 (one segment then fills a 64 KiB window); 1,500 made 5x the
/// exits.
const USER_MTU: u16 = 16000;

/// `--ip ADDR/PREFIX`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("'{s}' is not ADDR/PREFIX (e.g. 10.0.2.15/24)"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=30).contains(p))
        .ok_or_else(|| format!("'/{prefix}' is not a prefix length for a host address (1 to 30)"))?;
    Ok((addr, prefix))
}

/// An IPv6 address and its prefix length.
type Cidr6 = (Ipv6Addr, u8);

/// `--ip6 ADDR/PREFIX`.
pub fn parse_cidr6(s: &str) -> Result<Cidr6, String> {
    let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("'{s}' is not ADDR/PREFIX (e.g. fd00::2/64)"))?;
    let addr: Ipv6Addr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv6 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=127).contains(p))
        .ok_or_else(|| format!("'/{prefix}' is not a prefix length for a host address (1 to 127)"))?;
    if !is_unicast6(addr) {
        return Err(format!("'{addr}' is not a unicast address the program can have"));
    }
    Ok((addr, prefix))
}

/// Whether `ip` can be a host's address: not unspecified, loopback, multicast or link-local (the VM takes no
/// link-local address of its own).
fn is_unicast6(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_unicast_link_local())
}

/// The network `ip` is in, as a number.
fn network6(ip: Ipv6Addr, prefix_len: u8) -> u128 {
    u128::from(ip) & (u128::MAX << (128 - prefix_len))
}

/// `kiln run`'s network flags.
#[derive(clap::Args)]
pub struct NetArgs {
    /// The network: user (user-mode, no root needed), none (loopback only) or tap:NAME (an existing tap device)
    #[arg(long, value_name = "MODE", default_value = "user", value_parser = parse_net)]
    pub net: NetMode,
    /// Publish a port of the program on the host (repeatable), as docker run -p
    #[arg(long = "publish", short = 'p', value_name = "[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]", value_parser = parse_publish)]
    pub publish: Vec<PortForward>,
    /// The program's IPv4 address and prefix length on the network (default 10.0.2.15/24)
    #[arg(long, value_name = "ADDR/PREFIX", value_parser = parse_cidr)]
    pub ip: Option<(Ipv4Addr, u8)>,
    /// The program's default gateway (default: the first address of its network; 10.0.2.2 on the user network)
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
    /// The program's IPv6 address and prefix length (on a tap: no IPv6 unless given)
    #[arg(long, value_name = "ADDR/PREFIX", value_parser = parse_cidr6)]
    pub ip6: Option<Cidr6>,
    /// The program's IPv6 default router (default: the first address of its --ip6 network); may be link-local
    #[arg(long, value_name = "ADDR")]
    pub gateway6: Option<Ipv6Addr>,
    /// The DNS server the program's names go to (default: the host's); on the user network, ADDR:PORT also works
    #[arg(long, value_name = "ADDR")]
    pub dns: Option<String>,
}

/// `--dns`: an address, with port 53 unless given.
fn parse_dns(s: &str) -> Result<SocketAddr> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| anyhow!("--dns {s}: not an IP address (or ADDR:PORT)"))
}

/// The address and gateway the program gets when `--ip` and `--gateway` do not say.
const DEFAULT_IP: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 2, 15), 24);
/// The IPv6 address the program gets on the user network (slirp4netns's network, fd00::/64).
const DEFAULT_IP6: Cidr6 = (Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x15), 64);

/// The network card for the VM, or None for `--net none`. Host ports for `-p` are bound here, before the VM boots.
pub fn card(args: &NetArgs) -> Result<Option<NetConfig>> {
    let NetArgs { net: mode, publish, ip, gateway, ip6, gateway6, dns } = args;
    let (ip, gateway) = (*ip, *gateway);
    if !publish.is_empty() && *mode != NetMode::User {
        bail!("-p publishes ports through the user-mode network: it cannot be used with --net {}", shown(mode));
    }
    let dns = dns.as_deref().map(parse_dns).transpose()?;
    if *mode == NetMode::None {
        if ip.is_some() || gateway.is_some() || ip6.is_some() || gateway6.is_some() || dns.is_some() {
            bail!(
                "--ip, --gateway, --ip6, --gateway6 and --dns need a network card: they cannot be used with --net none"
            );
        }
        return Ok(None);
    }
    if matches!(mode, NetMode::Tap(_)) && dns.is_some_and(|d| d.port() != 53) {
        bail!("--dns with a port works on the user network only: a resolver on a tap asks port 53");
    }
    let (ipv4, prefix_len) = ip.unwrap_or(DEFAULT_IP);
    let network = u32::from(ipv4) & (u32::MAX << (32 - prefix_len));
    let default_gateway = if *mode == NetMode::User { USER_GATEWAY } else { 1 };
    let gateway = gateway.unwrap_or(Ipv4Addr::from(network + default_gateway));
    if u32::from(gateway) & (u32::MAX << (32 - prefix_len)) != network || gateway == ipv4 {
        bail!("--gateway {gateway} is not another address on {ipv4}/{prefix_len}'s network");
    }
    let user = *mode == NetMode::User;
    let (ipv6, gateway6) = ipv6_plan(user, ip6.as_ref(), gateway6.as_ref())?;
    let mac = random_mac()?;
    let (backend, mtu): (Box<dyn Backend>, u16) = match mode {
        NetMode::Tap(name) => {
            let tap = Tap::attach(name).with_context(|| format!("--net tap:{name}"))?;
            (Box::new(tap), Tap::mtu(name))
        }
        _ => {
            let forwarder = Ipv4Addr::from(network + USER_DNS);
            if forwarder == ipv4 || forwarder == gateway {
                bail!("--ip {ipv4}/{prefix_len}: the user-mode network keeps {forwarder} for its DNS forwarder");
            }
            let ipv6 = match (ipv6, gateway6) {
                (Some((guest_ip, prefix_len)), Some(gateway)) => {
                    let dns = Ipv6Addr::from(network6(guest_ip, prefix_len) + u128::from(USER_DNS));
                    if dns == guest_ip || dns == gateway {
                        bail!("--ip6 {guest_ip}/{prefix_len}: the user-mode network keeps {dns} for its DNS forwarder");
                    }
                    Some(UserNet6 { guest_ip, gateway, dns, prefix_len })
                }
                _ => None,
            };
            let config = UserNetConfig {
                guest_mac: mac,
                guest_ip: ipv4,
                gateway,
                prefix_len,
                dns: forwarder,
                dns_upstream: dns,
                forwards: publish.to_vec(),
                mtu: USER_MTU,
                ipv6,
            };
            (Box::new(UserBackend::start(config, publish.is_empty())?), USER_MTU)
        }
    };
    Ok(Some(NetConfig { backend, mac, ipv4, prefix_len, gateway, ipv6, gateway6, mtu }))
}

/// The program's IPv6 address and router from `--ip6` and `--gateway6`. On the user network the address defaults to
/// [`DEFAULT_IP6`] and the router to the network's second address (as on IPv4, and as slirp4netns does); elsewhere
/// there is no IPv6 without `--ip6`, and the router is the network's first address unless `--gateway6` names one (on
/// the network, or link-local).
fn ipv6_plan(
    user: bool,
    ip6: Option<&Cidr6>,
    gateway6: Option<&Ipv6Addr>,
) -> Result<(Option<Cidr6>, Option<Ipv6Addr>)> {
    let ip6 = ip6.or(user.then_some(&DEFAULT_IP6));
    let Some(&(ip, prefix_len)) = ip6 else {
        if let Some(gateway) = gateway6 {
            bail!("--gateway6 {gateway} needs --ip6: the program has no IPv6 address to reach it from");
        }
        return Ok((None, None));
    };
    let network = network6(ip, prefix_len);
    let default_gateway = if user { USER_GATEWAY } else { 1 };
    let gateway = gateway6.copied().unwrap_or(Ipv6Addr::from(network + u128::from(default_gateway)));
    let on_network = network6(gateway, prefix_len) == network;
    if gateway == ip || !(on_network || gateway.is_unicast_link_local()) || gateway.is_multicast() {
        bail!("--gateway6 {gateway} is not another address on {ip}/{prefix_len}'s network (or a link-local one)");
    }
    Ok((Some((ip, prefix_len)), Some(gateway)))
}

fn shown(mode: &NetMode) -> String {
    match mode {
        NetMode::User => "user".into(),
        NetMode::None => "none".into(),
        NetMode::Tap(name) => format!("tap:{name}"),
    }
}

/// The DNS server the program's resolver asks: the user-mode network's forwarder; on a tap, the host's own
/// resolvers (the network behind the tap is the operator's; a loopback resolver there is not reachable).
pub fn resolv_conf(args: &NetArgs) -> Option<String> {
    let (mode, ip) = (&args.net, args.ip);
    match mode {
        NetMode::Tap(_) if args.dns.is_some() => {
            Some(format!("nameserver {}\n", parse_dns(args.dns.as_deref()?).ok()?.ip()))
        }
        NetMode::User => {
            let (ipv4, prefix_len) = ip.unwrap_or(DEFAULT_IP);
            let network = u32::from(ipv4) & (u32::MAX << (32 - prefix_len));
            Some(format!("nameserver {}\n", Ipv4Addr::from(network + USER_DNS)))
        }
        NetMode::Tap(_) => {
            let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let servers: String = host
                .lines()
                .filter(|l| l.starts_with("nameserver") && !l.contains("127.") && !l.contains("::1"))
                .map(|l| format!("{l}\n"))
                .collect();
            (!servers.is_empty()).then_some(servers)
        }
        NetMode::None => None,
    }
}

/// A random locally administered unicast MAC, so that VMs on one bridge never share one.
fn random_mac() -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    // SAFETY: the pointer and length describe `mac`.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(anyhow!(std::io::Error::last_os_error())).context("cannot get random bytes for a MAC address");
    }
    mac[0] = (mac[0] & 0xfc) | 0x02;
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_modes_parse() {
        assert_eq!(parse_net("none"), Ok(NetMode::None));
        assert_eq!(parse_net("user"), Ok(NetMode::User));
        assert_eq!(parse_net("tap:tap0"), Ok(NetMode::Tap("tap0".into())));
        assert!(parse_net("tap:").unwrap_err().contains("tap:NAME"));
        assert!(parse_net("bridge").is_err());
    }

    #[test]
    fn addresses_parse_with_clear_errors() {
        assert_eq!(parse_cidr("10.1.2.3/16"), Ok((Ipv4Addr::new(10, 1, 2, 3), 16)));
        assert!(parse_cidr("10.1.2.3").unwrap_err().contains("ADDR/PREFIX"));
        assert!(parse_cidr("10.1.2/24").unwrap_err().contains("not an IPv4"));
        assert!(parse_cidr("10.1.2.3/33").unwrap_err().contains("1 to 30"));
    }

    fn args(net: NetMode, ip: Option<(Ipv4Addr, u8)>, gateway: Option<Ipv4Addr>, publish: &[&str]) -> NetArgs {
        let publish = publish.iter().map(|p| parse_publish(p).unwrap()).collect();
        NetArgs { net, publish, ip, gateway, ip6: None, gateway6: None, dns: None }
    }

    #[test]
    fn gateways_must_be_on_the_network() {
        let err = |ip, gw| format!("{:#}", card(&args(NetMode::Tap("kilnnosuch0".into()), ip, gw, &[])).unwrap_err());
        assert!(err(Some((Ipv4Addr::new(10, 0, 0, 2), 24)), Some(Ipv4Addr::new(10, 0, 1, 1))).contains("--gateway"));
        assert!(err(None, Some(Ipv4Addr::new(10, 0, 2, 15))).contains("another address"));
        assert!(err(None, None).contains("no such network device"));
        assert!(card(&args(NetMode::None, None, Some(Ipv4Addr::LOCALHOST), &[])).is_err());
        assert!(card(&args(NetMode::None, None, None, &[])).unwrap().is_none());
        let err = card(&args(NetMode::None, None, None, &["8080:80"])).unwrap_err().to_string();
        assert!(err.contains("-p") && err.contains("--net none"), "{err}");
        let user = card(&args(NetMode::User, None, None, &[])).unwrap().unwrap();
        assert_eq!((user.ipv4, user.gateway), (Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2)));
        let err = card(&args(NetMode::User, Some((Ipv4Addr::new(10, 0, 2, 3), 24)), None, &[])).unwrap_err();
        assert!(err.to_string().contains("DNS forwarder"), "{err}");
    }

    #[test]
    fn ipv6_addresses_parse_and_plan() {
        let ip: Ipv6Addr = "fd00::2".parse().unwrap();
        assert_eq!(parse_cidr6("fd00::2/64"), Ok((ip, 64)));
        assert!(parse_cidr6("fd00::2").unwrap_err().contains("ADDR/PREFIX"));
        assert!(parse_cidr6("10.0.0.1/24").unwrap_err().contains("not an IPv6"));
        assert!(parse_cidr6("fd00::2/128").unwrap_err().contains("1 to 127"));
        assert!(parse_cidr6("fe80::2/64").unwrap_err().contains("unicast"));
        assert_eq!(ipv6_plan(false, None, None).unwrap(), (None, None));
        assert!(ipv6_plan(false, None, Some(&ip)).unwrap_err().to_string().contains("needs --ip6"));
        let (addr, gateway) = ipv6_plan(false, Some(&(ip, 64)), None).unwrap();
        assert_eq!((addr, gateway), (Some((ip, 64)), Some("fd00::1".parse().unwrap())));
        let link_local: Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(ipv6_plan(false, Some(&(ip, 64)), Some(&link_local)).unwrap().1, Some(link_local));
        let elsewhere: Ipv6Addr = "fd01::1".parse().unwrap();
        let err = ipv6_plan(false, Some(&(ip, 64)), Some(&elsewhere)).unwrap_err();
        assert!(err.to_string().contains("--gateway6"));
        assert!(ipv6_plan(false, Some(&(ip, 64)), Some(&ip)).is_err());
        let user = ipv6_plan(true, None, None).unwrap();
        assert_eq!(user, (Some(DEFAULT_IP6), Some("fd00::2".parse().unwrap())));
        let user = card(&args(NetMode::User, None, None, &[])).unwrap().unwrap();
        assert_eq!(user.ipv6, Some(DEFAULT_IP6));
        let mut taken = args(NetMode::User, None, None, &[]);
        taken.ip6 = Some(("fd00::3".parse().unwrap(), 64));
        assert!(format!("{:#}", card(&taken).unwrap_err()).contains("DNS forwarder"));
    }

    #[test]
    fn resolvers_follow_the_network() {
        assert_eq!(resolv_conf(&args(NetMode::User, None, None, &[])).as_deref(), Some("nameserver 10.0.2.3\n"));
        assert_eq!(resolv_conf(&args(NetMode::None, None, None, &[])), None);
        let mut tap = args(NetMode::Tap("t0".into()), None, None, &[]);
        tap.dns = Some("192.0.2.53".into());
        assert_eq!(resolv_conf(&tap).as_deref(), Some("nameserver 192.0.2.53\n"));
        assert_eq!(parse_dns("10.0.0.1").unwrap().port(), 53);
        assert_eq!(parse_dns("127.0.0.1:5353").unwrap().port(), 5353);
        assert!(parse_dns("dns.example").unwrap_err().to_string().contains("not an IP address"));
    }

    #[test]
    fn macs_are_local_unicast() {
        let mac = random_mac().unwrap();
        assert_eq!(mac[0] & 3, 2);
    }
}
