//! The host path: frames between the workers and the gateway's control thread.
//!
//! Frames addressed to the gateway that the pipeline does not answer in place (an IP
//! protocol the control thread subscribed to, on an interface address) and multicast frames
//! to subscribed groups (VRRP's 224.0.0.18) go up to the control thread; the control thread
//! sends frames out of any data port through the workers. Both ways run through bounded
//! queues of buffers taken from a fixed pool allocated at start: a worker copies, never
//! allocates, never blocks; a full queue or an empty pool drops and counts.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crossbeam_queue::ArrayQueue;

/// Multicast groups the control thread can subscribe at once.
pub const GROUPS_MAX: usize = 8;

/// Who takes what comes up: each listener has its own queue, so one that is slow or not
/// running never holds up another's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The VRRP election.
    Election = 0,
    /// The host stack of the health checks (TCP and ICMP to the gateway's addresses).
    Stack = 1,
}

impl Listener {
    const ALL: [Listener; 2] = [Listener::Election, Listener::Stack];

    fn from_tag(tag: u8) -> Option<Listener> {
        Listener::ALL.get(usize::from(tag).checked_sub(1)?).copied()
    }

    /// The tag stored in the subscription tables: 0 is "nobody".
    fn tag(self) -> u8 {
        self as u8 + 1
    }
}

/// A frame on the host path, in a buffer of the path's pool.
#[derive(Debug)]
pub struct HostFrame {
    /// The interface it arrived on, or leaves by.
    pub iface: usize,
    len: usize,
    buf: Box<[u8]>,
}

impl HostFrame {
    /// The frame's bytes.
    pub fn data(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// The queues and the subscriptions, shared by the workers and the control thread.
#[derive(Debug)]
pub struct HostPath {
    free: ArrayQueue<Box<[u8]>>,
    up: [ArrayQueue<HostFrame>; Listener::ALL.len()],
    down: ArrayQueue<HostFrame>,
    /// For each IP protocol to the gateway's own addresses, the listener's tag (0: none).
    protocols: [AtomicU8; 256],
    /// Subscribed IPv4 multicast groups with their listener's tag (group << 8 | tag), 0 for
    /// a free slot.
    groups: [AtomicU64; GROUPS_MAX],
    /// Frames the control thread could not send: no buffer or the queue down full.
    send_failed: AtomicU64,
}

impl HostPath {
    /// A path of `frames` buffers of `frame_size` bytes, each way's queue as long.
    pub fn new(frames: usize, frame_size: usize) -> HostPath {
        let frames = frames.max(1);
        let free = ArrayQueue::new(frames);
        for _ in 0..frames {
            let _ = free.push(vec![0u8; frame_size].into_boxed_slice());
        }
        HostPath {
            free,
            up: std::array::from_fn(|_| ArrayQueue::new(frames)),
            down: ArrayQueue::new(frames),
            protocols: std::array::from_fn(|_| AtomicU8::new(0)),
            groups: std::array::from_fn(|_| AtomicU64::new(0)),
            send_failed: AtomicU64::new(0),
        }
    }

    /// Frames of IP protocol `proto` to the gateway's own addresses go up to `to` from now
    /// on.
    pub fn subscribe_protocol(&self, proto: u8, to: Listener) {
        if let Some(p) = self.protocols.get(usize::from(proto)) {
            p.store(to.tag(), Ordering::Release);
        }
    }

    /// Who takes protocol `proto`, if anyone.
    #[inline]
    pub fn wants_protocol(&self, proto: u8) -> Option<Listener> {
        let tag = self
            .protocols
            .get(usize::from(proto))?
            .load(Ordering::Relaxed);
        Listener::from_tag(tag)
    }

    /// Frames to multicast group `group` go up to `to` from now on; false if every slot is
    /// taken or `group` is not multicast.
    pub fn subscribe_group(&self, group: Ipv4Addr, to: Listener) -> bool {
        if !group.is_multicast() {
            return false;
        }
        if self.wants_group(group).is_some() {
            return true;
        }
        // Group and listener in one word, so a worker never sees one without the other.
        let v = (u64::from(u32::from(group)) << 8) | u64::from(to.tag());
        self.groups.iter().any(|slot| {
            slot.compare_exchange(0, v, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Stops taking frames to `group` up.
    pub fn unsubscribe_group(&self, group: Ipv4Addr) {
        let g = u64::from(u32::from(group));
        for slot in &self.groups {
            let v = slot.load(Ordering::Acquire);
            if v >> 8 == g {
                let _ = slot.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Who takes frames to `group`, if anyone.
    #[inline]
    pub fn wants_group(&self, group: Ipv4Addr) -> Option<Listener> {
        let g = u64::from(u32::from(group));
        if g == 0 {
            return None;
        }
        self.groups.iter().find_map(|s| {
            let v = s.load(Ordering::Relaxed);
            (v >> 8 == g)
                .then(|| Listener::from_tag((v & 0xff) as u8))
                .flatten()
        })
    }

    /// Whether any group is subscribed (a quick test before parsing a multicast frame).
    #[inline]
    pub fn any_group(&self) -> bool {
        self.groups.iter().any(|s| s.load(Ordering::Relaxed) != 0)
    }

    /// A worker hands `frame`, received on `iface`, up to `to`; false (the caller counts
    /// it) when no buffer is free or that queue is full.
    pub fn offer(&self, to: Listener, iface: usize, frame: &[u8]) -> bool {
        let Some(up) = self.up.get(to as usize) else {
            return false;
        };
        let Some(mut buf) = self.free.pop() else {
            return false;
        };
        let Some(dst) = buf.get_mut(..frame.len()) else {
            let _ = self.free.push(buf);
            return false;
        };
        dst.copy_from_slice(frame);
        let f = HostFrame {
            iface,
            len: frame.len(),
            buf,
        };
        match up.push(f) {
            Ok(()) => true,
            Err(f) => {
                let _ = self.free.push(f.buf);
                false
            }
        }
    }

    /// Listener `of` takes the next frame that came up to it; give it back with
    /// [`HostPath::recycle`].
    pub fn receive(&self, of: Listener) -> Option<HostFrame> {
        self.up.get(of as usize)?.pop()
    }

    /// Returns a frame's buffer to the pool.
    pub fn recycle(&self, f: HostFrame) {
        let _ = self.free.push(f.buf);
    }

    /// The control thread sends a frame out of interface `iface`: `build` writes it into a
    /// free buffer and returns its length. False (and counted) when no buffer is free, the
    /// queue down is full or `build` gives up.
    pub fn send(&self, iface: usize, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        let sent = self.free.pop().is_some_and(|mut buf| {
            match build(&mut buf).filter(|n| *n <= buf.len()) {
                Some(len) => match self.down.push(HostFrame { iface, len, buf }) {
                    Ok(()) => true,
                    Err(f) => {
                        let _ = self.free.push(f.buf);
                        false
                    }
                },
                None => {
                    let _ = self.free.push(buf);
                    false
                }
            }
        });
        if !sent {
            self.send_failed.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Frames [`HostPath::send`] could not queue.
    pub fn send_failed(&self) -> u64 {
        self.send_failed.load(Ordering::Relaxed)
    }

    /// Whether every frame the control thread sent has been taken by a worker.
    pub fn down_is_empty(&self) -> bool {
        self.down.is_empty()
    }

    /// A worker takes the next frame to send.
    pub(crate) fn next_down(&self) -> Option<HostFrame> {
        self.down.pop()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn frames_go_up_and_down_and_buffers_come_back() {
        let h = HostPath::new(2, 64);
        assert!(h.offer(Listener::Stack, 1, b"abc"));
        assert!(h.offer(Listener::Election, 0, b"de"));
        assert!(
            !h.offer(Listener::Stack, 0, b"f"),
            "the pool is empty: dropped, never blocked"
        );
        assert!(h.receive(Listener::Stack).is_some_and(|f| {
            let ok = (f.iface, f.data()) == (1, &b"abc"[..]);
            h.recycle(f);
            ok
        }));
        assert!(
            h.receive(Listener::Stack).is_none(),
            "each listener its own queue"
        );
        assert!(
            !h.offer(Listener::Stack, 0, &[0u8; 65]),
            "longer than a buffer"
        );
        assert!(h.send(3, |b| {
            b[..2].copy_from_slice(b"hi");
            Some(2)
        }));
        assert!(!h.send(3, |_| Some(1)), "no buffer left");
        assert_eq!(h.send_failed(), 1);
        let d = h.next_down().unwrap();
        assert_eq!((d.iface, d.data()), (3, &b"hi"[..]));
        h.recycle(d);
        let e = h.receive(Listener::Election).unwrap();
        assert_eq!(e.data(), b"de");
        h.recycle(e);
        assert!(!h.send(0, |_| None));
        assert_eq!(h.free.len(), 2, "every buffer is back");
    }

    #[test]
    fn subscriptions() {
        let h = HostPath::new(1, 64);
        assert_eq!(h.wants_protocol(112), None);
        h.subscribe_protocol(112, Listener::Election);
        h.subscribe_protocol(6, Listener::Stack);
        h.subscribe_protocol(255, Listener::Stack);
        assert_eq!(h.wants_protocol(112), Some(Listener::Election));
        assert_eq!(h.wants_protocol(6), Some(Listener::Stack));
        assert_eq!(h.wants_protocol(255), Some(Listener::Stack));
        assert_eq!(h.wants_protocol(17), None);
        let vrrp = Ipv4Addr::new(224, 0, 0, 18);
        assert!(!h.any_group());
        assert!(!h.subscribe_group(Ipv4Addr::new(10, 0, 0, 1), Listener::Election));
        assert!(h.subscribe_group(vrrp, Listener::Election));
        assert!(h.subscribe_group(vrrp, Listener::Election));
        assert_eq!(h.wants_group(vrrp), Some(Listener::Election));
        assert!(h.any_group());
        for i in 1..GROUPS_MAX as u8 {
            assert!(h.subscribe_group(Ipv4Addr::new(239, 0, 0, i), Listener::Stack));
        }
        assert!(
            !h.subscribe_group(Ipv4Addr::new(239, 1, 1, 1), Listener::Stack),
            "slots full"
        );
        assert_eq!(
            h.wants_group(Ipv4Addr::new(239, 0, 0, 3)),
            Some(Listener::Stack)
        );
        h.unsubscribe_group(vrrp);
        assert_eq!(h.wants_group(vrrp), None);
    }
}
