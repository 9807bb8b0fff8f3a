//! A container of a pod (`BOOT_FLAG_POD_NETWORK`): its VM shares the pod's network with the pod's other containers,
//! each a VM of its own on the user-mode network in the pod's namespace. The program's listening TCP ports are told to
//! the VMM, which publishes them in that namespace (`Hypercall::Listen`); a TCP connection to the loopback or the VM's
//! own address on a port nothing here listens on is made to the gateway instead, which the VMM carries to the pod
//! namespace's loopback, where the other containers' ports are published.

use crate::errno::Errno;
use crate::hypercall;
use core::sync::atomic::{AtomicBool, Ordering};
use kiln_abi::boot::BOOT_FLAG_POD_NETWORK;
use kiln_abi::Hypercall;
use smoltcp::wire::{IpAddress, IpEndpoint};

static POD: AtomicBool = AtomicBool::new(false);

pub fn init(boot: &kiln_abi::BootInfo) {
    POD.store(boot.flags & BOOT_FLAG_POD_NETWORK != 0 && boot.net.mmio_phys != 0, Ordering::Relaxed);
}

fn in_pod() -> bool {
    POD.load(Ordering::Relaxed)
}

/// Where a TCP connect to `remote` goes: to the gateway for the loopback or the VM's own IPv4 address on a port no
/// socket here listens on (a sibling container's), else where it was asked.
pub fn destination(remote: IpEndpoint) -> IpEndpoint {
    let IpAddress::Ipv4(v4) = remote.addr else { return remote };
    if !in_pod() {
        return remote;
    }
    let Some(card) = super::card_address_info() else { return remote };
    if !(v4.is_loopback() || v4 == card.ip) || super::inspect(|s| s.listens_for(remote)) {
        return remote;
    }
    IpEndpoint::new(IpAddress::Ipv4(card.gateway), remote.port)
}

/// Tells the VMM that a TCP socket bound to `address` (none: all) listens on `port`, unless another socket here
/// listens on it already. Listeners on the loopback only are the VM's own, as on Linux a pod's are the pod's.
pub fn publish(address: Option<IpAddress>, port: u16) -> Result<(), Errno> {
    if !in_pod() || address.is_some_and(is_loopback) || port == 0 {
        return Ok(());
    }
    if super::inspect(|s| s.listeners.contains_key(&port)) {
        return Ok(());
    }
    match hypercall::call(Hypercall::Listen, &[u64::from(port)]) {
        0 => Ok(()),
        e if e < 0 => Err(Errno(-e)),
        _ => Ok(()),
    }
}

fn is_loopback(address: IpAddress) -> bool {
    match address {
        IpAddress::Ipv4(v4) => v4.is_loopback(),
        IpAddress::Ipv6(v6) => v6.is_loopback(),
    }
}
