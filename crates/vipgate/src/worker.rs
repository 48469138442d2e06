//! A worker's poll loop: receive a batch from each port, run it through the pipeline, send
//! what it gives back, all without allocating, locking or a syscall per frame.

use std::io;

use vipgate_dataplane::{Action, Emit, Pipeline};
use vipgate_io::{Frame, Ports};

/// Frames the pipeline may originate per step (ARP requests, frames released after
/// resolution); more are refused and counted by the pipeline.
const STAGED_MAX: usize = 64;

/// Frames the pipeline builds, kept in preallocated buffers until the step hands them to
/// the ports: the pipeline builds them while a received frame's buffer is borrowed, so they
/// cannot come from the port's pool at that moment.
struct Staged {
    bufs: Vec<Box<[u8]>>,
    /// (interface, length) of each staged frame, in `bufs` order.
    items: Vec<(usize, usize)>,
}

impl Emit for Staged {
    fn emit(&mut self, iface: usize, build: &mut dyn FnMut(&mut [u8]) -> Option<usize>) -> bool {
        let Some(buf) = self.bufs.get_mut(self.items.len()) else {
            return false;
        };
        match build(buf) {
            Some(len) if len <= buf.len() => {
                self.items.push((iface, len));
                true
            }
            _ => false,
        }
    }
}

/// Counters of the loop itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LoopCounters {
    /// Staged frames lost because the port's pool was empty.
    pub(crate) tx_no_buffer: u64,
}

/// One worker's ports and the batch arrays it reuses.
pub(crate) struct WorkerLoop<P: Ports> {
    ports: P,
    batch: usize,
    rx: Vec<Frame>,
    tx: Vec<Vec<Frame>>,
    release: Vec<Frame>,
    staged: Staged,
    /// The loop's counters.
    pub(crate) counters: LoopCounters,
}

impl<P: Ports> WorkerLoop<P> {
    /// A loop over `ports`, receiving up to `batch` frames per port per step.
    pub(crate) fn new(ports: P, batch: usize) -> WorkerLoop<P> {
        let batch = batch.max(1);
        let frame_size = ports.frame_size();
        let count = ports.count();
        WorkerLoop {
            rx: vec![Frame { addr: 0, len: 0 }; batch],
            tx: (0..count)
                .map(|_| Vec::with_capacity(batch + STAGED_MAX))
                .collect(),
            release: Vec::with_capacity(batch),
            staged: Staged {
                bufs: (0..STAGED_MAX)
                    .map(|_| vec![0u8; frame_size].into_boxed_slice())
                    .collect(),
                items: Vec::with_capacity(STAGED_MAX),
            },
            ports,
            batch,
            counters: LoopCounters::default(),
        }
    }

    /// The ports.
    pub(crate) fn ports(&self) -> &P {
        &self.ports
    }

    /// The ports, to inject or collect frames in tests.
    pub(crate) fn ports_mut(&mut self) -> &mut P {
        &mut self.ports
    }

    /// One pass over every port at `now_ms`; returns the frames received.
    ///
    /// # Errors
    /// A failed kernel wakeup.
    pub(crate) fn step(&mut self, p: &mut Pipeline<'_>, now_ms: u64) -> io::Result<usize> {
        let mut received = 0;
        for port in 0..self.ports.count() {
            let n = self
                .ports
                .recv(port, self.rx.get_mut(..self.batch).unwrap_or(&mut []));
            received += n;
            for i in 0..n {
                let Some(&frame) = self.rx.get(i) else { break };
                let buf = self.ports.buf(frame);
                let action = p.frame(port, buf, frame.len as usize, now_ms, &mut self.staged);
                match action {
                    Action::Send { iface, len } => match self.tx.get_mut(iface) {
                        Some(q) => q.push(Frame {
                            addr: frame.addr,
                            len: u32::try_from(len).unwrap_or(0),
                        }),
                        None => self.release.push(frame),
                    },
                    Action::Release => self.release.push(frame),
                }
            }
            self.unstage();
            self.transmit();
        }
        p.tick(now_ms, &mut self.staged);
        self.unstage();
        self.transmit();
        self.ports.flush()?;
        Ok(received)
    }

    /// Copies staged frames into port buffers and queues them.
    fn unstage(&mut self) {
        for (k, &(iface, len)) in self.staged.items.iter().enumerate() {
            let (Some(src), Some(frame)) = (self.staged.bufs.get(k), self.ports.alloc()) else {
                self.counters.tx_no_buffer += 1;
                continue;
            };
            let dst = self.ports.buf(frame);
            match (dst.get_mut(..len), src.get(..len), self.tx.get_mut(iface)) {
                (Some(dst), Some(src), Some(q)) => {
                    dst.copy_from_slice(src);
                    q.push(Frame {
                        addr: frame.addr,
                        len: u32::try_from(len).unwrap_or(0),
                    });
                }
                _ => self.ports.release(&[frame]),
            }
        }
        self.staged.items.clear();
    }

    fn transmit(&mut self) {
        for (port, q) in self.tx.iter_mut().enumerate() {
            if !q.is_empty() {
                self.ports.send(port, q);
                q.clear();
            }
        }
        if !self.release.is_empty() {
            self.ports.release(&self.release);
            self.release.clear();
        }
    }

    /// Sends the pipeline's gratuitous ARPs for every address the gateway holds.
    pub(crate) fn announce(&mut self, p: &mut Pipeline<'_>) {
        p.announce(&mut self.staged);
        self.unstage();
        self.transmit();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::net::Ipv4Addr;

    use vipgate_dataplane::{Dataplane, DataplaneConfig, Interface, NeighborConfig};
    use vipgate_io::MemPorts;
    use vipgate_nat::policy::{DnatRule, Ipv4Net, NatConfig};
    use vipgate_nat::{Proto, Side};
    use vipgate_wire::arp::{ArpOp, ArpRepr};
    use vipgate_wire::testing::{self, verify_checksums, MAC_GATEWAY};
    use vipgate_wire::Parsed;

    use super::WorkerLoop;

    const PRIV_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
    const H1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
    const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const PRIV_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn dataplane() -> Dataplane {
        let net = |a: [u8; 4]| Ipv4Net::new(Ipv4Addr::from(a), 24).unwrap();
        let iface = |name: &str, side, mac, addr: [u8; 4]| Interface {
            name: name.into(),
            side,
            mac,
            addr: Ipv4Addr::from(addr),
            net: net(addr),
            virtual_addrs: Vec::new(),
        };
        Dataplane::new(
            DataplaneConfig {
                interfaces: vec![
                    iface("pub", Side::Public, MAC_GATEWAY, [203, 0, 113, 1]),
                    iface("priv", Side::Private, PRIV_MAC, [198, 18, 0, 1]),
                ],
                routes: vec![],
                neighbors: NeighborConfig::default(),
                icmp_rate: 10,
                frame_size: 2048,
                virtual_mac: None,
            },
            NatConfig {
                capacity: 256,
                vips: vec![VIP],
                dnat: vec![DnatRule {
                    vip: VIP,
                    proto: Proto::Tcp,
                    port_lo: 80,
                    port_hi: 80,
                    to: H1,
                    to_port: None,
                }],
                ..NatConfig::default()
            },
        )
        .unwrap()
    }

    fn arp(frame: &[u8]) -> ArpRepr {
        match vipgate_wire::parse(frame).unwrap() {
            Parsed::Arp { offset, .. } => ArpRepr::parse(frame, offset).unwrap(),
            other => panic!("not ARP: {other:?}"),
        }
    }

    #[test]
    fn frames_cross_ports_after_arp_and_no_buffer_leaks() {
        let dp = dataplane();
        let mut p = dp.pipeline(0);
        let mut lp = WorkerLoop::new(MemPorts::new(2, 64, 2048), 16);
        let free = lp.ports().free_frames();

        let syn = testing::tcp(Ipv4Addr::new(198, 51, 100, 100), VIP, 40000, 80, 0x02, b"");
        lp.ports_mut().inject(0, &syn);
        assert_eq!(lp.step(&mut p, 0).unwrap(), 1);
        let asked = lp.ports_mut().take_sent(1);
        assert_eq!(asked.len(), 1);
        assert_eq!(arp(&asked[0]).target_ip, H1);

        let answer = ArpRepr {
            op: ArpOp::Reply,
            sender_mac: H1_MAC,
            sender_ip: H1,
            target_mac: PRIV_MAC,
            target_ip: PRIV_IP,
        };
        let mut f = vec![0u8; 64];
        let n = answer.emit_frame(&mut f, None).unwrap();
        lp.ports_mut().inject(1, &f[..n]);
        lp.step(&mut p, 10).unwrap();
        let out = lp.ports_mut().take_sent(1);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..6], &H1_MAC);
        verify_checksums(&out[0]).unwrap();
        assert_eq!(testing::layout(&out[0]).dst, H1);
        assert!(lp.ports_mut().take_sent(0).is_empty());
        assert_eq!(lp.ports().free_frames(), free, "every buffer came back");
    }

    #[test]
    fn start_announces_the_vip_on_the_public_port() {
        let dp = dataplane();
        let mut p = dp.pipeline(0);
        let mut lp = WorkerLoop::new(MemPorts::new(2, 64, 2048), 16);
        lp.announce(&mut p);
        let public: Vec<Ipv4Addr> = lp
            .ports_mut()
            .take_sent(0)
            .iter()
            .map(|f| arp(f).sender_ip)
            .collect();
        assert!(public.contains(&VIP));
        let private: Vec<Ipv4Addr> = lp
            .ports_mut()
            .take_sent(1)
            .iter()
            .map(|f| arp(f).sender_ip)
            .collect();
        assert_eq!(private, vec![PRIV_IP]);
    }
}
