//! The smoltcp `Device` the host-side stack runs on: it receives the guest frames the engine chose to hand it
//! (`inject`) and transmits straight into the queue the guest reads. When that queue is full it offers no TX
//! token, which is how a slow guest pushes back on the stack.

use std::collections::VecDeque;
use std::sync::Arc;

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::IpAddress;

use crate::frame::connection_request_source;
use crate::queue::{Counters, Shared};

/// The Ethernet header, which smoltcp counts in an Ethernet device's MTU.
const ETHERNET_HEADER: usize = 14;

pub(crate) struct FrameDevice {
    rx: VecDeque<Vec<u8>>,
    shared: Arc<Shared>,
    /// The link's IP MTU.
    mtu: u16,
    /// The source endpoints of the connection requests (SYNs) sent to the guest since `take_requests_sent`.
    requests_sent: Vec<(IpAddress, u16)>,
}

impl FrameDevice {
    pub fn new(shared: Arc<Shared>, mtu: u16) -> FrameDevice {
        FrameDevice { rx: VecDeque::new(), shared, mtu, requests_sent: Vec::new() }
    }

    /// Queues a guest frame for the stack's next `poll`.
    pub fn inject(&mut self, frame: Vec<u8>) {
        self.rx.push_back(frame);
    }

    /// The source endpoints of the connection requests the stack sent to the guest since the last call: what tells
    /// the relay that a connection it makes to the guest has its SYN out (smoltcp does not say).
    pub fn take_requests_sent(&mut self) -> Vec<(IpAddress, u16)> {
        std::mem::take(&mut self.requests_sent)
    }
}

pub(crate) struct RxToken(Vec<u8>);
pub(crate) struct TxToken<'a> {
    shared: &'a Shared,
    requests_sent: &'a mut Vec<(IpAddress, u16)>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        // Sent as far as smoltcp is concerned, whether or not the queue had room.
        if let Some(source) = connection_request_source(&frame) {
            self.requests_sent.push(source);
        }
        if !self.shared.push_to_guest(frame) {
            Counters::bump(&self.shared.stats.dropped);
        }
        r
    }
}

impl Device for FrameDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken { shared: &self.shared, requests_sent: &mut self.requests_sent }))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        self.shared
            .to_guest_has_room()
            .then_some(TxToken { shared: &self.shared, requests_sent: &mut self.requests_sent })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = usize::from(self.mtu) + ETHERNET_HEADER;
        caps
    }
}
