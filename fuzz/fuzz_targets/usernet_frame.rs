//! The user-mode network's first look at each frame a guest sends (Ethernet, ARP, IPv4/IPv6, UDP, TCP): any bytes,
//! on a network with and without IPv6.
#![no_main]

use kiln_usernet::UserNetConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let with_v6 = UserNetConfig::default();
    let without_v6 = UserNetConfig { ipv6: None, ..UserNetConfig::default() };
    let _ = kiln_usernet::fuzzing::classify(frame, &with_v6);
    let _ = kiln_usernet::fuzzing::classify(frame, &without_v6);
});
