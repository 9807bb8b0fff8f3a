//! Pod networking: the VM takes the pod's address. In the pod's network namespace (made by CNI), the VM process makes
//! a tap device and has tc redirect every frame between the CNI interface (eth0) and the tap, both ways (an ingress
//! qdisc on each, with a u32 match-all filter whose action is `mirred egress redirect`, as Kata Containers does);
//! the guest gets eth0's address, prefix and MAC (the pod network's bridge has learnt that MAC), its IPv6 address too
//! on a dual-stack pod network, and the namespace's routes through eth0: the default ones, and the others CNI made (a
//! Calico pod's /32 address reaches its gateway 169.254.1.1 through a link-scope route), which the library OS routes
//! by (`kiln_abi::boot::RouteInfo`); the card is then attached as `kiln run --net tap:NAME` attaches one. Done over rtnetlink from Rust, not with
//! iproute2's `tc` and `ip`: no dependence on the node's binaries, and no process started per request at create.

use crate::netlink::{Kind, Rtnl};
use kiln_launch::network::{Addresses, Network, Route};
use kiln_vmm::virtio::tap::{Tap, TapError};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute, TcFilterU32Option,
    TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The tap device the VM's card is attached to, in the pod's namespace (one VM per pod has the pod's address).
pub const TAP: &str = "kiln-tap0";
/// The interface CRI asks CNI for (`CNI_IFNAME`).
const CNI_IFNAME: &str = "eth0";
/// `htons(ETH_P_ALL)`: a filter for every protocol.
const ALL_PROTOCOLS: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// The handle of a device's ingress qdisc (`ffff:`), the parent of its ingress filters.
const INGRESS: TcHandle = TcHandle { major: 0xffff, minor: 0 };

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("cannot open the network namespace {0}")]
    OpenNamespace(String, #[source] std::io::Error),
    #[error("cannot enter the network namespace {0}")]
    EnterNamespace(String, #[source] std::io::Error),
    #[error("the pod's network: {0}")]
    Netlink(&'static str, #[source] std::io::Error),
    #[error(
        "the pod's network namespace has no interface with an IPv4 address for the VM to take (CNI made none: Kiln \
         looks for {CNI_IFNAME}, else the one Ethernet interface with an address)"
    )]
    NoInterface,
    #[error(
        "the pod's network has {0} routes through its interface besides the default ones: Kiln gives the VM at most \
         {max}",
        max = kiln_abi::boot::MAX_ROUTES
    )]
    TooManyRoutes(usize),
    #[error(
        "the pod's network is taken: another container of this pod has it (one container per pod gets the pod's \
         address in Kiln)"
    )]
    Taken,
    #[error("the pod's network: {0}")]
    Tap(#[from] TapError),
}

/// The interface CNI made, as the VM takes it over.
#[derive(Debug, Clone, PartialEq)]
struct PodLink {
    index: u32,
    name: String,
    mac: [u8; 6],
    mtu: u32,
    ipv4: Ipv4Addr,
    prefix_len: u8,
    /// Its first global IPv6 address, if CNI gave one (a dual-stack pod network).
    ipv6: Option<(Ipv6Addr, u8)>,
}

/// Moves this process into the network namespace at `path` (before it has other threads, so that they all live
/// there).
pub fn enter(path: &Path) -> Result<(), PodNetError> {
    let shown = path.display().to_string();
    let ns = File::open(path).map_err(|e| PodNetError::OpenNamespace(shown.clone(), e))?;
    // SAFETY: setns(2) on an open namespace file; it changes only this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(PodNetError::EnterNamespace(shown, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes the tap, redirects the CNI interface's traffic through it, and says how the VM's card is set up. Runs in
/// the pod's network namespace.
pub fn set_up() -> Result<Network, PodNetError> {
    let mut rtnl = Rtnl::new().map_err(|e| PodNetError::Netlink("netlink socket", e))?;
    let links = dump_links(&mut rtnl)?;
    let addresses = dump(&mut rtnl, RouteNetlinkMessage::GetAddress(AddressMessage::default()), "listing addresses")?;
    let link = pod_link(&links, &addresses)?;
    let (ipv4, prefix_len) = (link.ipv4, link.prefix_len);
    let routes = dump(&mut rtnl, RouteNetlinkMessage::GetRoute(route_query()), "listing routes")?;
    let table = pod_routes(&routes, &link, IpAddr::V4(ipv4), prefix_len);
    let gateway = match table.gateway {
        Some(IpAddr::V4(g)) if g != ipv4 => g,
        // No default route: the VM has none either (only its network and the routes reach anything).
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let mut more = table.routes;
    let (ipv6, gateway6) = match link.ipv6 {
        Some((ip6, prefix6)) => {
            let mut query = route_query();
            query.header.address_family = AddressFamily::Inet6;
            let routes6 = dump(&mut rtnl, RouteNetlinkMessage::GetRoute(query), "listing IPv6 routes")?;
            let table6 = pod_routes(&routes6, &link, IpAddr::V6(ip6), prefix6);
            more.extend(table6.routes);
            let gateway6 = match table6.gateway {
                Some(IpAddr::V6(g)) if g != ip6 && !g.is_multicast() => Some(g),
                _ => None,
            };
            (Some((ip6, prefix6)), gateway6)
        }
        None => (None, None),
    };
    if more.len() > kiln_abi::boot::MAX_ROUTES {
        return Err(PodNetError::TooManyRoutes(more.len()));
    }

    Tap::create_persistent(TAP).map_err(|e| match e {
        TapError::Busy { .. } => PodNetError::Taken,
        other => other.into(),
    })?;
    let tap = dump_links(&mut rtnl)?
        .into_iter()
        .find(|l| name_of(l) == Some(TAP))
        .ok_or(PodNetError::Netlink("the tap just made", std::io::ErrorKind::NotFound.into()))?;
    let tap_index = tap.header.index;
    set_link(&mut rtnl, tap_index, link.mtu)?;
    for (from, to) in [(link.index, tap_index), (tap_index, link.index)] {
        redirect(&mut rtnl, from, to)?;
    }
    let addresses = Addresses { ipv4, prefix_len, gateway, ipv6, gateway6, dns: None };
    Ok(Network::Tap { device: TAP.to_string(), addresses, mac: Some(link.mac), routes: more })
}

/// A container on the pod's shared network (the user-mode network in the pod's namespace, which this process has
/// entered): its programs may listen on any port, as a pod's containers may on Linux, whose runtimes open the
/// unprivileged port range to the pod (`net.ipv4.ip_unprivileged_port_start`, a setting of the namespace; the VM
/// process publishes the ports after its jail dropped root). Best effort: a port below the range then fails to
/// listen with EACCES, which the program sees.
/// The namespace's loopback is brought up too: the containers' ports are published on it, and CRI's `loopback` CNI
/// plugin brings it up but `ctr run --with-ns` into a bare namespace does not.
pub fn share() -> Result<Option<Network>, PodNetError> {
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0");
    let mut rtnl = Rtnl::new().map_err(|e| PodNetError::Netlink("netlink socket", e))?;
    let links = dump_links(&mut rtnl)?;
    if let Some(lo) = links.iter().find(|l| l.header.link_layer_type == LinkLayerType::Loopback) {
        if !lo.header.flags.contains(LinkFlags::Up) {
            let mut message = LinkMessage::default();
            message.header.index = lo.header.index;
            message.header.flags = LinkFlags::Up;
            message.header.change_mask = LinkFlags::Up;
            rtnl.request(RouteNetlinkMessage::SetLink(message), Kind::Change)
                .map_err(|e| PodNetError::Netlink("bringing the loopback up", e))?;
        }
    }
    Ok(None)
}

/// Gives the pod's namespace at `netns` back after its VM ended (however it ended: a SIGKILLed VM process cleans
/// nothing): the CNI interface's traffic no longer redirected, the tap removed. Best effort, on a thread of its own
/// (setns changes only the calling thread); the namespace may be gone already.
pub fn tear_down(netns: &Path) {
    let netns = netns.to_path_buf();
    let cleaner = std::thread::spawn(move || {
        enter(&netns).ok()?;
        let mut rtnl = Rtnl::new().ok()?;
        let links = dump_links(&mut rtnl).ok()?;
        if let Some(tap) = links.iter().find(|l| name_of(l) == Some(TAP)) {
            let mut message = LinkMessage::default();
            message.header.index = tap.header.index;
            let _ = rtnl.request(RouteNetlinkMessage::DelLink(message), Kind::Change);
        }
        let addresses = dump(&mut rtnl, RouteNetlinkMessage::GetAddress(AddressMessage::default()), "").ok()?;
        let link = pod_link(&links, &addresses).ok()?;
        rtnl.request(RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(link.index)), Kind::Change).ok()
    });
    let _ = cleaner.join();
}

fn dump(
    rtnl: &mut Rtnl,
    query: RouteNetlinkMessage,
    what: &'static str,
) -> Result<Vec<RouteNetlinkMessage>, PodNetError> {
    rtnl.request(query, Kind::Dump).map_err(|e| PodNetError::Netlink(what, e))
}

fn dump_links(rtnl: &mut Rtnl) -> Result<Vec<LinkMessage>, PodNetError> {
    let all = dump(rtnl, RouteNetlinkMessage::GetLink(LinkMessage::default()), "listing interfaces")?;
    Ok(all.into_iter().filter_map(|m| if let RouteNetlinkMessage::NewLink(l) = m { Some(l) } else { None }).collect())
}

fn route_query() -> RouteMessage {
    let mut query = RouteMessage::default();
    query.header.address_family = AddressFamily::Inet;
    query
}

fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.as_str()) } else { None })
}

/// The interface CNI made: eth0, else the one other Ethernet interface with an IPv4 address; with its first IPv4
/// address.
fn pod_link(links: &[LinkMessage], addresses: &[RouteNetlinkMessage]) -> Result<PodLink, PodNetError> {
    let ipv4_of = |index: u32| {
        addresses.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                    _ => None,
                })
            }
            _ => None,
        })
    };
    let candidates: Vec<(&LinkMessage, (Ipv4Addr, u8))> = links
        .iter()
        .filter(|l| l.header.link_layer_type == LinkLayerType::Ether && name_of(l) != Some(TAP))
        .filter_map(|l| Some((l, ipv4_of(l.header.index)?)))
        .collect();
    let chosen = match candidates.iter().find(|(l, _)| name_of(l) == Some(CNI_IFNAME)) {
        Some(found) => found,
        None if candidates.len() == 1 => &candidates[0],
        None => return Err(PodNetError::NoInterface),
    };
    let (link, (ipv4, prefix_len)) = chosen;
    let mac = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    });
    let mtu = link.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None });
    let ipv6 = addresses.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewAddress(a) if a.header.index == link.header.index => {
            a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V6(ip)) if is_global(ip) => Some((*ip, a.header.prefix_len)),
                _ => None,
            })
        }
        _ => None,
    });
    Ok(PodLink {
        index: link.header.index,
        name: name_of(link).unwrap_or_default().to_string(),
        mac: mac.ok_or(PodNetError::NoInterface)?,
        mtu: mtu.unwrap_or(1500),
        ipv4: *ipv4,
        prefix_len: *prefix_len,
        ipv6: ipv6.filter(|&(_, prefix)| (1..=128).contains(&prefix)),
    })
}

/// An IPv6 address the VM can take as its own: not link-local (the guest makes its own), loopback or multicast.
fn is_global(ip: &Ipv6Addr) -> bool {
    !ip.is_unicast_link_local() && !ip.is_loopback() && !ip.is_multicast() && !ip.is_unspecified()
}

/// The namespace's routes through the pod's interface, of one family, as the VM takes them.
#[derive(Debug, Default, PartialEq)]
struct PodRoutes {
    /// The default route's gateway.
    gateway: Option<IpAddr>,
    /// The other routes (and a default route without a gateway, as a link-scope route to everything).
    routes: Vec<Route>,
}

/// The main table's unicast routes through the pod's interface (`link`, whose address of this family is
/// `own`/`prefix_len`): the default route's gateway, and every other route but the ones the kernel makes for the
/// interface's own network (and IPv6's link-local one), which the VM has as its own.
fn pod_routes(routes: &[RouteNetlinkMessage], link: &PodLink, own: IpAddr, prefix_len: u8) -> PodRoutes {
    let mut taken = PodRoutes::default();
    for message in routes {
        let RouteNetlinkMessage::NewRoute(route) = message else { continue };
        let header = &route.header;
        if header.table != RouteHeader::RT_TABLE_MAIN || header.kind != RouteType::Unicast {
            continue;
        }
        if !route.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == link.index)) {
            continue;
        }
        let address = |a: &RouteAddress| match a {
            RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
            RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
            _ => None,
        };
        let gateway = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(g) => address(g),
            _ => None,
        });
        let destination = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(d) => address(d),
            _ => None,
        });
        let len = header.destination_prefix_length;
        let destination = match (destination, len) {
            (Some(d), _) if d.is_ipv4() == own.is_ipv4() => d,
            (None, 0) if own.is_ipv4() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (None, 0) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => continue,
        };
        if len == 0 && gateway.is_some() {
            taken.gateway = taken.gateway.or(gateway);
            continue;
        }
        let own_network = gateway.is_none() && len == prefix_len && prefix_of(destination, len) == prefix_of(own, len);
        let link_local = matches!(destination, IpAddr::V6(d) if d.is_unicast_link_local() && len >= 10);
        if own_network || link_local || gateway.is_some_and(|g| g.is_ipv4() != own.is_ipv4()) {
            continue;
        }
        taken.routes.push(Route { destination, prefix_len: len, gateway });
    }
    taken
}

/// The first `len` bits of `ip`, as a number.
fn prefix_of(ip: IpAddr, len: u8) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0)),
        IpAddr::V6(v6) => u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0),
    }
}

/// Brings the tap up with the CNI interface's MTU (the guest's MTU is read from the tap).
fn set_link(rtnl: &mut Rtnl, index: u32, mtu: u32) -> Result<(), PodNetError> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes.push(LinkAttribute::Mtu(mtu));
    rtnl.request(RouteNetlinkMessage::SetLink(message), Kind::Change)
        .map_err(|e| PodNetError::Netlink("the tap", e))?;
    Ok(())
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut qdisc = TcMessage::with_index(index as i32);
    qdisc.header.handle = INGRESS;
    qdisc.header.parent = TcHandle::INGRESS;
    qdisc.attributes.push(TcAttribute::Kind("ingress".to_string()));
    qdisc
}

/// Every frame arriving on `from` leaves through `to`: `tc qdisc add dev FROM ingress; tc filter add dev FROM parent
/// ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev TO`. A leftover ingress qdisc (a VM
/// process killed before it cleaned up) is replaced, with its filters.
fn redirect(rtnl: &mut Rtnl, from: u32, to: u32) -> Result<(), PodNetError> {
    let _ = rtnl.request(RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(from)), Kind::Change);
    rtnl.request(RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(from)), Kind::Create)
        .map_err(|e| PodNetError::Netlink("adding an ingress qdisc", e))?;

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]),
    ];
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut filter = TcMessage::with_index(from as i32);
    filter.header.parent = INGRESS;
    filter.header.info = (1 << 16) | ALL_PROTOCOLS;
    filter.attributes = vec![
        TcAttribute::Kind("u32".to_string()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    rtnl.request(RouteNetlinkMessage::NewTrafficFilter(filter), Kind::Create)
        .map_err(|e| PodNetError::Netlink("adding a redirecting filter", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: LinkLayerType) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.link_layer_type = kind;
        link.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, index as u8]),
            LinkAttribute::Mtu(1450),
        ];
        link
    }

    fn address(index: u32, ip: &str, prefix_len: u8) -> RouteNetlinkMessage {
        let mut a = AddressMessage::default();
        a.header.index = index;
        a.header.prefix_len = prefix_len;
        a.attributes.push(AddressAttribute::Address(ip.parse().unwrap()));
        RouteNetlinkMessage::NewAddress(a)
    }

    #[test]
    fn the_pod_link_is_eth0_else_the_only_addressed_ethernet() {
        let links = [
            link(1, "lo", LinkLayerType::Loopback),
            link(2, "net1", LinkLayerType::Ether),
            link(3, "eth0", LinkLayerType::Ether),
        ];
        let addresses = [address(1, "127.0.0.1", 8), address(2, "10.1.0.5", 24), address(3, "10.2.0.7", 16)];
        let chosen = pod_link(&links, &addresses).unwrap();
        assert_eq!((chosen.name.as_str(), chosen.ipv4, chosen.prefix_len), ("eth0", Ipv4Addr::new(10, 2, 0, 7), 16));
        assert_eq!((chosen.mac, chosen.mtu), ([2, 0, 0, 0, 0, 3], 1450));
        let chosen = pod_link(&links[..2], &addresses).unwrap();
        assert_eq!(chosen.name, "net1");
        assert!(matches!(pod_link(&links[..1], &addresses), Err(PodNetError::NoInterface)));
        let two = [link(2, "net1", LinkLayerType::Ether), link(4, "net2", LinkLayerType::Ether)];
        assert!(matches!(
            pod_link(&two, &[address(2, "10.1.0.5", 24), address(4, "10.3.0.5", 24)]),
            Err(PodNetError::NoInterface)
        ));
    }

    /// A main-table unicast route through `oif` to `destination` (none for a default route).
    fn route(oif: u32, destination: Option<&str>, len: u8, gateway: Option<&str>) -> RouteNetlinkMessage {
        let address = |s: &str| match s.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => RouteAddress::Inet(v4),
            IpAddr::V6(v6) => RouteAddress::Inet6(v6),
        };
        let mut r = RouteMessage::default();
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.kind = RouteType::Unicast;
        r.header.destination_prefix_length = len;
        r.attributes.push(RouteAttribute::Oif(oif));
        r.attributes.extend(destination.map(|d| RouteAttribute::Destination(address(d))));
        r.attributes.extend(gateway.map(|g| RouteAttribute::Gateway(address(g))));
        RouteNetlinkMessage::NewRoute(r)
    }

    fn to(destination: &str, prefix_len: u8, gateway: Option<&str>) -> Route {
        Route { destination: destination.parse().unwrap(), prefix_len, gateway: gateway.map(|g| g.parse().unwrap()) }
    }

    #[test]
    fn the_vm_takes_the_default_route_and_the_other_routes_through_the_pod_link() {
        let links = [link(2, "net1", LinkLayerType::Ether), link(3, "eth0", LinkLayerType::Ether)];
        let pod = pod_link(&links, &[address(3, "10.2.0.7", 16)]).unwrap();
        let own = IpAddr::V4(pod.ipv4);
        let routes = [
            route(3, Some("10.2.0.0"), 16, None),
            route(2, None, 0, Some("10.1.0.1")),
            route(3, None, 0, Some("10.2.0.1")),
            route(3, Some("10.96.0.0"), 12, Some("10.2.0.254")),
            route(2, Some("10.97.0.0"), 16, Some("10.1.0.254")),
        ];
        let taken = pod_routes(&routes, &pod, own, 16);
        assert_eq!(taken.gateway, Some("10.2.0.1".parse().unwrap()), "the default route through eth0, not net1");
        assert_eq!(taken.routes, [to("10.96.0.0", 12, Some("10.2.0.254"))], "not eth0's own network, not net1's");
        assert_eq!(pod_routes(&routes[..1], &pod, own, 16), PodRoutes::default(), "no default route: none");
    }

    #[test]
    fn a_calico_pod_has_a_32_a_link_route_to_its_gateway_and_routes_through_it() {
        let links = [link(3, "eth0", LinkLayerType::Ether)];
        let addresses = [address(3, "10.93.1.5", 32), address(3, "fd93::5", 128), address(3, "fe80::3", 64)];
        let pod = pod_link(&links, &addresses).unwrap();
        assert_eq!((pod.prefix_len, pod.ipv6), (32, Some(("fd93::5".parse().unwrap(), 128))));
        let routes = [
            route(3, Some("169.254.1.1"), 32, None),
            route(3, Some("198.51.100.0"), 24, Some("169.254.1.1")),
            route(3, None, 0, Some("169.254.1.1")),
        ];
        let taken = pod_routes(&routes, &pod, IpAddr::V4(pod.ipv4), 32);
        assert_eq!(taken.gateway, Some("169.254.1.1".parse().unwrap()));
        assert_eq!(taken.routes, [to("169.254.1.1", 32, None), to("198.51.100.0", 24, Some("169.254.1.1"))]);
        // IPv6: the link-local network is the VM's own; a default route through a router's link-local address.
        let routes6 = [route(3, Some("fe80::"), 64, None), route(3, None, 0, Some("fe80::1"))];
        let taken6 = pod_routes(&routes6, &pod, IpAddr::V6("fd93::5".parse().unwrap()), 128);
        assert_eq!(taken6, PodRoutes { gateway: Some("fe80::1".parse().unwrap()), routes: vec![] });
        // A default route with no gateway sends everything straight to the link.
        let on_link = pod_routes(&[route(3, None, 0, None)], &pod, IpAddr::V4(pod.ipv4), 32);
        assert_eq!(on_link.routes, [to("0.0.0.0", 0, None)]);
    }

    #[test]
    fn ipv6_is_the_links_global_address() {
        let links = [link(3, "eth0", LinkLayerType::Ether)];
        let addresses = [
            address(3, "10.2.0.7", 16),
            address(3, "fe80::1:2", 64),
            address(3, "fd77::7", 64),
            address(3, "fd99::9", 64),
        ];
        let chosen = pod_link(&links, &addresses).unwrap();
        assert_eq!(chosen.ipv6, Some(("fd77::7".parse().unwrap(), 64)), "the first global one, not link-local");
        assert_eq!(pod_link(&links, &addresses[..2]).unwrap().ipv6, None, "a link-local address only: IPv4 only");
        assert_eq!(prefix_of("fd77::7".parse().unwrap(), 64), prefix_of("fd77::1".parse().unwrap(), 64));
        assert_eq!(prefix_of("10.2.3.4".parse().unwrap(), 16), u128::from(u32::from(Ipv4Addr::new(10, 2, 0, 0))));
    }
}
