//! The VM's network interfaces as programs see them (netlink, the SIOCGIF* ioctls): `lo` with the loopback
//! addresses and, with a network card, `eth0` with the MAC, MTU and addresses the VMM gave it.

use alloc::vec::Vec;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const ARPHRD_ETHER: u16 = 1;
pub const ARPHRD_LOOPBACK: u16 = 772;
const IFF_UP: u32 = 0x1;
const IFF_BROADCAST: u32 = 0x2;
const IFF_LOOPBACK: u32 = 0x8;
const IFF_RUNNING: u32 = 0x40;
const IFF_MULTICAST: u32 = 0x1000;
const IFF_LOWER_UP: u32 = 0x10000;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_HOST: u8 = 254;

/// An address of an interface.
pub struct Address {
    pub family: u8,
    pub bytes: Vec<u8>,
    pub prefix: u8,
    pub scope: u8,
}

impl Address {
    fn new(family: u8, bytes: &[u8], prefix: u8, scope: u8) -> Address {
        Address { family, bytes: Vec::from(bytes), prefix, scope }
    }

    /// The IPv4 broadcast address of the address's network.
    pub fn broadcast(&self) -> [u8; 4] {
        let host_bits = u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
        let ip = u32::from_be_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]]);
        (ip | host_bits).to_be_bytes()
    }

    /// The IPv4 netmask of the prefix.
    pub fn netmask(&self) -> [u8; 4] {
        (!u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0)).to_be_bytes()
    }
}

/// One interface of the VM.
pub struct Interface {
    pub index: u32,
    pub name: &'static str,
    pub kind: u16,
    pub flags: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
    pub broadcast: [u8; 6],
    pub addresses: Vec<Address>,
}

/// `lo`, and `eth0` if the VM has a network card.
pub fn interfaces() -> Vec<Interface> {
    let mut all = alloc::vec![Interface {
        index: 1,
        name: "lo",
        kind: ARPHRD_LOOPBACK,
        flags: IFF_UP | IFF_LOOPBACK | IFF_RUNNING | IFF_LOWER_UP,
        mtu: 65536,
        mac: [0; 6],
        broadcast: [0; 6],
        addresses: alloc::vec![
            Address::new(AF_INET, &[127, 0, 0, 1], 8, RT_SCOPE_HOST),
            Address::new(AF_INET6, &smoltcp::wire::Ipv6Address::LOCALHOST.octets(), 128, RT_SCOPE_HOST),
        ],
    }];
    if let Some(card) = super::card_address_info() {
        let mut addresses = alloc::vec![Address::new(AF_INET, &card.ip.octets(), card.prefix_len, RT_SCOPE_UNIVERSE)];
        if let Some(v6) = card.ip6 {
            addresses.push(Address::new(AF_INET6, &v6.ip.octets(), v6.prefix_len, RT_SCOPE_UNIVERSE));
        }
        all.push(Interface {
            index: 2,
            name: "eth0",
            kind: ARPHRD_ETHER,
            flags: IFF_UP | IFF_BROADCAST | IFF_RUNNING | IFF_MULTICAST | IFF_LOWER_UP,
            mtu: u32::from(card.mtu),
            mac: card.mac,
            broadcast: [0xff; 6],
            addresses,
        });
    }
    all
}
