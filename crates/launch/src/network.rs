//! The network a VM gets: the `--net` mode, the program's addresses (`--ip`, `--gateway`, `--ip6`, `--gateway6`),
//! its DNS server (`--dns`) and the ports published from the host (`-p`), checked together and resolved into a
//! [`Network`].

use kiln_usernet::PortForward;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `--net`: where the VM's network card leads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetMode {
    /// The user-mode network (the default): no root needed; outbound connections go through host sockets, and `-p`
    /// publishes the program's ports on the host.
    #[default]
    User,
    /// No card: the program has the loopback only.
    None,
    /// An existing tap device on the host.
    Tap(String),
}

impl std::fmt::Display for NetMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetMode::User => write!(f, "user"),
            NetMode::None => write!(f, "none"),
            NetMode::Tap(name) => write!(f, "tap:{name}"),
        }
    }
}

/// An IPv6 address and its prefix length.
pub type Cidr6 = (Ipv6Addr, u8);

/// The network flags as given, before they are checked against each other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkFlags {
    pub mode: NetMode,
    /// `-p`; none means the image's ports.
    pub publish: Vec<PortForward>,
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub ip6: Option<Cidr6>,
    pub gateway6: Option<Ipv6Addr>,
    /// `--dns`: ADDR or ADDR:PORT.
    pub dns: Option<String>,
}

/// The program's addresses on its network card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    pub ipv4: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub ipv6: Option<Cidr6>,
    pub gateway6: Option<Ipv6Addr>,
    /// The DNS server the program's names go to; none for the host's.
    pub dns: Option<SocketAddr>,
}

impl Addresses {
    /// The IPv4 network the program is on, as a number.
    pub fn network(&self) -> u32 {
        network4(self.ipv4, self.prefix_len)
    }

    /// The user-mode network's DNS forwarder: the third address of the program's network.
    pub fn forwarder(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network() + USER_DNS)
    }

    /// The user-mode network's IPv6 DNS forwarder, if the program has IPv6.
    pub fn forwarder6(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(|(ip, prefix_len)| Ipv6Addr::from(network6(ip, prefix_len) + u128::from(USER_DNS)))
    }
}

/// The resolved network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// No card: the loopback only.
    None,
    /// The user-mode network, with the host ports published to the program's.
    User {
        addresses: Addresses,
        #[serde(with = "forwards")]
        publish: Vec<PortForward>,
        /// The program's listening TCP ports are published, on the same port numbers, as it listens (a container
        /// of a pod, whose VM process runs in the pod's network namespace: see docs/kubernetes.md).
        #[serde(default)]
        publish_listens: bool,
    },
    /// An existing tap device on the host.
    Tap {
        device: String,
        addresses: Addresses,
        /// The card's MAC address; none for a random one. A containerd pod's VM takes its CNI interface's, which the
        /// pod network's bridge has learnt.
        #[serde(default)]
        mac: Option<[u8; 6]>,
        /// Routes besides the default ones (a pod's CNI routes), at most `kiln_abi::boot::MAX_ROUTES`.
        #[serde(default)]
        routes: Vec<Route>,
    },
}

/// A route through the card: packets to `destination`/`prefix_len` go to `gateway`, or straight to their
/// destination on the link without one (a link-scope route). Both addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub destination: IpAddr,
    pub prefix_len: u8,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

impl Route {
    /// The route as the boot info carries it.
    pub fn boot_info(&self) -> kiln_abi::boot::RouteInfo {
        use kiln_abi::boot::{RouteInfo, ROUTE_IPV4, ROUTE_IPV6};
        let octets = |ip: IpAddr| -> [u8; 16] {
            let mut bytes = [0u8; 16];
            match ip {
                IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => bytes = v6.octets(),
            }
            bytes
        };
        RouteInfo {
            family: if self.destination.is_ipv4() { ROUTE_IPV4 } else { ROUTE_IPV6 },
            prefix_len: self.prefix_len,
            _reserved: [0; 6],
            destination: octets(self.destination),
            gateway: self.gateway.map_or([0; 16], octets),
        }
    }
}

impl Network {
    /// Host ports published to the program.
    pub fn published(&self) -> &[PortForward] {
        match self {
            Network::User { publish, .. } => publish,
            _ => &[],
        }
    }

    /// The DNS server the program's resolver asks (its `/etc/resolv.conf`): the user-mode network's forwarder; on a
    /// tap, `--dns` or else the host's own resolvers (the network behind the tap is the operator's; a loopback
    /// resolver there is not reachable). Read when the VM is launched, not when resolved.
    pub fn resolv_conf(&self) -> Option<String> {
        match self {
            Network::None => None,
            Network::User { addresses, .. } => Some(format!("nameserver {}\n", addresses.forwarder())),
            Network::Tap { addresses, .. } => match addresses.dns {
                Some(dns) => Some(format!("nameserver {}\n", dns.ip())),
                None => {
                    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                    let servers: String = host
                        .lines()
                        .filter(|l| l.starts_with("nameserver") && !l.contains("127.") && !l.contains("::1"))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    (!servers.is_empty()).then_some(servers)
                }
            },
        }
    }
}

/// A port forward list as `-p` strings, so that a recorded spec reads as the command line did.
mod forwards {
    use kiln_usernet::PortForward;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(forwards: &[PortForward], s: S) -> Result<S::Ok, S::Error> {
        forwards.iter().map(ToString::to_string).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PortForward>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|p| p.parse().map_err(|e: kiln_usernet::ForwardParseError| serde::de::Error::custom(e.problem)))
            .collect()
    }
}

/// What is wrong with the network flags, in their terms.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    #[error("-p publishes ports through the user-mode network: it cannot be used with --net {0}")]
    PublishWithoutUserNet(NetMode),
    #[error("--dns {0}: not an IP address (or ADDR:PORT)")]
    BadDns(String),
    #[error("--ip, --gateway, --ip6, --gateway6 and --dns need a network card: they cannot be used with --net none")]
    AddressesWithoutCard,
    #[error("--dns with a port works on the user network only: a resolver on a tap asks port 53")]
    DnsPortOnTap,
    #[error("--ip {0}")]
    BadIp(String),
    #[error("--ip6 {0}")]
    BadIp6(String),
    #[error("--gateway {gateway} is not another address on {ip}/{prefix_len}'s network")]
    GatewayOffNetwork { gateway: Ipv4Addr, ip: Ipv4Addr, prefix_len: u8 },
    #[error("--ip {ip}/{prefix_len}: the user-mode network keeps {forwarder} for its DNS forwarder")]
    ForwarderTaken { ip: Ipv4Addr, prefix_len: u8, forwarder: Ipv4Addr },
    #[error("--ip6 {ip}/{prefix_len}: the user-mode network keeps {forwarder} for its DNS forwarder")]
    Forwarder6Taken { ip: Ipv6Addr, prefix_len: u8, forwarder: Ipv6Addr },
    #[error("--gateway6 {0} needs --ip6: the program has no IPv6 address to reach it from")]
    Gateway6WithoutIp6(Ipv6Addr),
    #[error("--gateway6 {gateway} is not another address on {ip}/{prefix_len}'s network (or a link-local one)")]
    Gateway6OffNetwork { gateway: Ipv6Addr, ip: Ipv6Addr, prefix_len: u8 },
}

/// The user-mode network's addresses: slirp's plan (10.0.2.15/24, gateway .2, DNS .3) unless `--ip`/`--gateway`
/// say otherwise.
const USER_GATEWAY: u32 = 2;
const USER_DNS: u32 = 3;
/// The address the program gets when `--ip` does not say.
const DEFAULT_IP: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 2, 15), 24);
/// The IPv6 address the program gets on the user network (slirp4netns's network, fd00::/64).
pub const DEFAULT_IP6: Cidr6 = (Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x15), 64);

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

/// `--ip ADDR/PREFIX`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("'{s}' is not ADDR/PREFIX (e.g. 10.0.2.15/24)"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv4 address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| prefix_problem4(prefix))?;
    check_cidr((addr, prefix))?;
    Ok((addr, prefix))
}

fn prefix_problem4(prefix: impl std::fmt::Display) -> String {
    format!("'/{prefix}' is not a prefix length for a host address (1 to 30)")
}

fn check_cidr((_, prefix): (Ipv4Addr, u8)) -> Result<(), String> {
    match (1..=30).contains(&prefix) {
        true => Ok(()),
        false => Err(prefix_problem4(prefix)),
    }
}

/// `--ip6 ADDR/PREFIX`.
pub fn parse_cidr6(s: &str) -> Result<Cidr6, String> {
    let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("'{s}' is not ADDR/PREFIX (e.g. fd00::2/64)"))?;
    let addr: Ipv6Addr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv6 address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| prefix_problem6(prefix))?;
    check_cidr6((addr, prefix))?;
    Ok((addr, prefix))
}

fn prefix_problem6(prefix: impl std::fmt::Display) -> String {
    format!("'/{prefix}' is not a prefix length for a host address (1 to 127)")
}

fn check_cidr6((addr, prefix): Cidr6) -> Result<(), String> {
    if !(1..=127).contains(&prefix) {
        return Err(prefix_problem6(prefix));
    }
    if !is_unicast6(addr) {
        return Err(format!("'{addr}' is not a unicast address the program can have"));
    }
    Ok(())
}

/// Whether `ip` can be a host's address: not unspecified, loopback, multicast or link-local (the VM takes no
/// link-local address of its own).
fn is_unicast6(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_unicast_link_local())
}

fn network4(ip: Ipv4Addr, prefix_len: u8) -> u32 {
    u32::from(ip) & (u32::MAX << (32 - prefix_len))
}

/// The network `ip` is in, as a number.
fn network6(ip: Ipv6Addr, prefix_len: u8) -> u128 {
    u128::from(ip) & (u128::MAX << (128 - prefix_len))
}

/// `--dns`: an address, with port 53 unless given.
fn parse_dns(s: &str) -> Result<SocketAddr, NetworkError> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| NetworkError::BadDns(s.to_string()))
}

/// Checks the network flags against each other and fills in the defaults.
pub fn resolve(flags: &NetworkFlags) -> Result<Network, NetworkError> {
    let NetworkFlags { mode, publish, ip, gateway, ip6, gateway6, dns } = flags;
    if !publish.is_empty() && *mode != NetMode::User {
        return Err(NetworkError::PublishWithoutUserNet(mode.clone()));
    }
    let dns = dns.as_deref().map(parse_dns).transpose()?;
    if *mode == NetMode::None {
        if ip.is_some() || gateway.is_some() || ip6.is_some() || gateway6.is_some() || dns.is_some() {
            return Err(NetworkError::AddressesWithoutCard);
        }
        return Ok(Network::None);
    }
    if matches!(mode, NetMode::Tap(_)) && dns.is_some_and(|d| d.port() != 53) {
        return Err(NetworkError::DnsPortOnTap);
    }
    let (ipv4, prefix_len) = ip.unwrap_or(DEFAULT_IP);
    check_cidr((ipv4, prefix_len)).map_err(NetworkError::BadIp)?;
    if let Some(ip6) = ip6 {
        check_cidr6(*ip6).map_err(NetworkError::BadIp6)?;
    }
    let network = network4(ipv4, prefix_len);
    let user = *mode == NetMode::User;
    let default_gateway = if user { USER_GATEWAY } else { 1 };
    let gateway = gateway.unwrap_or(Ipv4Addr::from(network + default_gateway));
    if network4(gateway, prefix_len) != network || gateway == ipv4 {
        return Err(NetworkError::GatewayOffNetwork { gateway, ip: ipv4, prefix_len });
    }
    let (ipv6, gateway6) = ipv6_plan(user, ip6.as_ref(), gateway6.as_ref())?;
    let addresses = Addresses { ipv4, prefix_len, gateway, ipv6, gateway6, dns };
    match mode {
        NetMode::Tap(device) => Ok(Network::Tap { device: device.clone(), addresses, mac: None, routes: Vec::new() }),
        _ => {
            let forwarder = addresses.forwarder();
            if forwarder == ipv4 || forwarder == gateway {
                return Err(NetworkError::ForwarderTaken { ip: ipv4, prefix_len, forwarder });
            }
            if let (Some((ip, prefix_len)), Some(forwarder)) = (ipv6, addresses.forwarder6()) {
                if forwarder == ip || Some(forwarder) == gateway6 {
                    return Err(NetworkError::Forwarder6Taken { ip, prefix_len, forwarder });
                }
            }
            Ok(Network::User { addresses, publish: publish.clone(), publish_listens: false })
        }
    }
}

/// The program's IPv6 address and router from `--ip6` and `--gateway6`. On the user network the address defaults to
/// [`DEFAULT_IP6`] and the router to the network's second address (as on IPv4, and as slirp4netns does); elsewhere
/// there is no IPv6 without `--ip6`, and the router is the network's first address unless `--gateway6` names one (on
/// the network, or link-local).
fn ipv6_plan(
    user: bool,
    ip6: Option<&Cidr6>,
    gateway6: Option<&Ipv6Addr>,
) -> Result<(Option<Cidr6>, Option<Ipv6Addr>), NetworkError> {
    let ip6 = ip6.or(user.then_some(&DEFAULT_IP6));
    let Some(&(ip, prefix_len)) = ip6 else {
        if let Some(gateway) = gateway6 {
            return Err(NetworkError::Gateway6WithoutIp6(*gateway));
        }
        return Ok((None, None));
    };
    let network = network6(ip, prefix_len);
    let default_gateway = if user { USER_GATEWAY } else { 1 };
    let gateway = gateway6.copied().unwrap_or(Ipv6Addr::from(network + u128::from(default_gateway)));
    let on_network = network6(gateway, prefix_len) == network;
    if gateway == ip || !(on_network || gateway.is_unicast_link_local()) || gateway.is_multicast() {
        return Err(NetworkError::Gateway6OffNetwork { gateway, ip, prefix_len });
    }
    Ok((Some((ip, prefix_len)), Some(gateway)))
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

    fn flags(mode: NetMode, ip: Option<(Ipv4Addr, u8)>, gateway: Option<Ipv4Addr>, publish: &[&str]) -> NetworkFlags {
        let publish = publish.iter().map(|p| parse_publish(p).unwrap()).collect();
        NetworkFlags { mode, publish, ip, gateway, ..Default::default() }
    }

    fn addresses(network: Network) -> Addresses {
        match network {
            Network::User { addresses, .. } | Network::Tap { addresses, .. } => addresses,
            Network::None => panic!("no card"),
        }
    }

    #[test]
    fn gateways_must_be_on_the_network() {
        let tap = || NetMode::Tap("t0".into());
        let err = |ip, gw| resolve(&flags(tap(), ip, gw, &[])).unwrap_err().to_string();
        assert!(err(Some((Ipv4Addr::new(10, 0, 0, 2), 24)), Some(Ipv4Addr::new(10, 0, 1, 1))).contains("--gateway"));
        assert!(err(None, Some(Ipv4Addr::new(10, 0, 2, 15))).contains("another address"));
        let on_tap = addresses(resolve(&flags(tap(), None, None, &[])).unwrap());
        assert_eq!((on_tap.gateway, on_tap.ipv6), (Ipv4Addr::new(10, 0, 2, 1), None));
        assert!(resolve(&flags(NetMode::None, None, Some(Ipv4Addr::LOCALHOST), &[])).is_err());
        assert_eq!(resolve(&flags(NetMode::None, None, None, &[])), Ok(Network::None));
        let err = resolve(&flags(NetMode::None, None, None, &["8080:80"])).unwrap_err().to_string();
        assert!(err.contains("-p") && err.contains("--net none"), "{err}");
        let user = addresses(resolve(&flags(NetMode::User, None, None, &[])).unwrap());
        assert_eq!((user.ipv4, user.gateway), (Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2)));
        let err = resolve(&flags(NetMode::User, Some((Ipv4Addr::new(10, 0, 2, 3), 24)), None, &[])).unwrap_err();
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
        let user = addresses(resolve(&flags(NetMode::User, None, None, &[])).unwrap());
        assert_eq!(user.ipv6, Some(DEFAULT_IP6));
        let mut taken = flags(NetMode::User, None, None, &[]);
        taken.ip6 = Some(("fd00::3".parse().unwrap(), 64));
        assert!(resolve(&taken).unwrap_err().to_string().contains("DNS forwarder"));
    }

    #[test]
    fn resolvers_follow_the_network() {
        let conf = |f: &NetworkFlags| resolve(f).unwrap().resolv_conf();
        assert_eq!(conf(&flags(NetMode::User, None, None, &[])).as_deref(), Some("nameserver 10.0.2.3\n"));
        assert_eq!(conf(&flags(NetMode::None, None, None, &[])), None);
        let mut tap = flags(NetMode::Tap("t0".into()), None, None, &[]);
        tap.dns = Some("192.0.2.53".into());
        assert_eq!(conf(&tap).as_deref(), Some("nameserver 192.0.2.53\n"));
        assert_eq!(parse_dns("10.0.0.1").unwrap().port(), 53);
        assert_eq!(parse_dns("127.0.0.1:5353").unwrap().port(), 5353);
        assert!(parse_dns("dns.example").unwrap_err().to_string().contains("not an IP address"));
    }
}
