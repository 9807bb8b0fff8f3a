//! `kiln run`'s network flags, checked and resolved by `kiln_launch::network`.

use kiln_launch::network::{parse_cidr, parse_cidr6, parse_net, parse_publish, Cidr6, NetMode, NetworkFlags};
use kiln_usernet::PortForward;
use std::net::{Ipv4Addr, Ipv6Addr};

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

impl NetArgs {
    pub fn flags(&self) -> NetworkFlags {
        let NetArgs { net, publish, ip, gateway, ip6, gateway6, dns } = self;
        NetworkFlags {
            mode: net.clone(),
            publish: publish.clone(),
            ip: *ip,
            gateway: *gateway,
            ip6: *ip6,
            gateway6: *gateway6,
            dns: dns.clone(),
        }
    }
}
