//! `kiln run`'s network options: which backend the VM's network card uses (`--net`), the address the program gets
//! (`--ip`, `--gateway`), and the ports published from the host (`-p`).

use anyhow::{anyhow, bail, Context, Result};
use kiln_vmm::virtio::tap::Tap;
use kiln_vmm::NetConfig;
use std::net::Ipv4Addr;

/// `--net`: where the VM's network card leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// No card: the program has the loopback only.
    None,
    /// An existing tap device on the host.
    Tap(String),
}

pub fn parse_net(s: &str) -> Result<NetMode, String> {
    match s {
        "none" => Ok(NetMode::None),
        _ => match s.strip_prefix("tap:") {
            Some(name) if !name.is_empty() => Ok(NetMode::Tap(name.to_string())),
            _ => Err(format!("'{s}' is not a network: use none or tap:NAME")),
        },
    }
}

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

/// The address and gateway the program gets when `--ip` and `--gateway` do not say.
const DEFAULT_IP: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 2, 15), 24);

/// The network card for the VM, or None for `--net none`.
pub fn card(mode: &NetMode, ip: Option<(Ipv4Addr, u8)>, gateway: Option<Ipv4Addr>) -> Result<Option<NetConfig>> {
    let NetMode::Tap(name) = mode else {
        if ip.is_some() || gateway.is_some() {
            bail!("--ip and --gateway need a network card: use them with --net tap:NAME");
        }
        return Ok(None);
    };
    let (ipv4, prefix_len) = ip.unwrap_or(DEFAULT_IP);
    let network = u32::from(ipv4) & (u32::MAX << (32 - prefix_len));
    let gateway = gateway.unwrap_or(Ipv4Addr::from(network + 1));
    if u32::from(gateway) & (u32::MAX << (32 - prefix_len)) != network || gateway == ipv4 {
        bail!("--gateway {gateway} is not another address on {ipv4}/{prefix_len}'s network");
    }
    let backend = Tap::attach(name).with_context(|| format!("--net tap:{name}"))?;
    let mtu = Tap::mtu(name);
    Ok(Some(NetConfig { backend: Box::new(backend), mac: random_mac()?, ipv4, prefix_len, gateway, mtu }))
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

    #[test]
    fn gateways_must_be_on_the_network() {
        let err = |ip, gw| format!("{:#}", card(&NetMode::Tap("kilnnosuch0".into()), ip, gw).unwrap_err());
        assert!(err(Some((Ipv4Addr::new(10, 0, 0, 2), 24)), Some(Ipv4Addr::new(10, 0, 1, 1))).contains("--gateway"));
        assert!(err(None, Some(Ipv4Addr::new(10, 0, 2, 15))).contains("another address"));
        assert!(err(None, None).contains("no such network device"));
        assert!(card(&NetMode::None, None, Some(Ipv4Addr::LOCALHOST)).is_err());
        assert!(card(&NetMode::None, None, None).unwrap().is_none());
    }

    #[test]
    fn macs_are_local_unicast() {
        let mac = random_mac().unwrap();
        assert_eq!(mac[0] & 3, 2);
    }
}
