//! In-memory ports for tests and benchmarks.

use std::collections::VecDeque;

use crate::pool::{FramePool, Owner};
use crate::{Frame, PortStats, Ports};

/// Where `recv` puts a frame inside its buffer: the same 256 bytes of headroom that AF_XDP copy
/// mode leaves (XDP_PACKET_HEADROOM), so code tested on [`MemPorts`] sees received buffers of
/// the same length as on [`crate::XdpPorts`].
pub const MEM_RX_HEADROOM: usize = 256;

/// In-memory [`Ports`]: frames injected by a test are received, frames sent are kept for the
/// test to take. Buffers come from one preallocated pool; `recv`, `send`, `release`, `alloc`
/// and `flush` never allocate (only the test-facing `inject` and `take_sent` do).
pub struct MemPorts {
    mem: Vec<u8>,
    pool: FramePool,
    frame_size: usize,
    ports: Vec<MemPort>,
}

struct MemPort {
    incoming: VecDeque<Vec<u8>>,
    /// Capacity `frames`: every entry holds a distinct chunk, so pushes never reallocate.
    sent: Vec<Frame>,
    stats: PortStats,
}

impl MemPorts {
    /// `ports` ports sharing a pool of `frames` buffers of `frame_size` bytes.
    ///
    /// # Panics
    /// If `frame_size` is not a power of two of at least 512 bytes (room for the receive
    /// headroom and a full Ethernet frame would need 2048; tests may want smaller), or if
    /// `frames * frame_size` does not fit in memory.
    pub fn new(ports: usize, frames: u32, frame_size: usize) -> Self {
        assert!(
            frame_size.is_power_of_two() && frame_size >= 2 * MEM_RX_HEADROOM,
            "MemPorts frame_size {frame_size}: expected a power of two >= {}",
            2 * MEM_RX_HEADROOM
        );
        let size32 = u32::try_from(frame_size).unwrap_or(u32::MAX);
        let bytes = (frames as usize).saturating_mul(frame_size);
        MemPorts {
            mem: vec![0; bytes],
            pool: FramePool::new(frames, size32),
            frame_size,
            ports: (0..ports)
                .map(|_| MemPort {
                    incoming: VecDeque::new(),
                    sent: Vec::with_capacity(frames as usize),
                    stats: PortStats::default(),
                })
                .collect(),
        }
    }

    /// Queues a copy of `frame` to be received on `port` by a later `recv`.
    ///
    /// # Panics
    /// If `port` does not exist or the frame does not fit a buffer after the headroom
    /// (`frame_size - MEM_RX_HEADROOM` bytes): a test that does this is wrong.
    pub fn inject(&mut self, port: usize, frame: &[u8]) {
        let room = self.frame_size - MEM_RX_HEADROOM;
        assert!(
            frame.len() <= room,
            "MemPorts::inject: frame of {} bytes does not fit a buffer ({room} bytes after headroom)",
            frame.len()
        );
        let count = self.ports.len();
        assert!(
            port < count,
            "MemPorts::inject: port {port} does not exist ({count} ports)"
        );
        if let Some(p) = self.ports.get_mut(port) {
            p.incoming.push_back(frame.to_vec());
        }
    }

    /// Frames injected on `port` and not yet received.
    pub fn pending_rx(&self, port: usize) -> usize {
        self.ports.get(port).map_or(0, |p| p.incoming.len())
    }

    /// Copies of the frames sent on `port` since the last call, in order; their buffers go back
    /// to the pool.
    pub fn take_sent(&mut self, port: usize) -> Vec<Vec<u8>> {
        let Some(p) = self.ports.get_mut(port) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(p.sent.len());
        for f in p.sent.drain(..) {
            if let Some(bytes) = frame_bytes(&self.mem, f) {
                out.push(bytes.to_vec());
            }
            self.pool.put(f.addr, Owner::Port);
        }
        out
    }

    /// Buffers currently in the pool (neither received, allocated nor sent-and-not-taken).
    pub fn free_frames(&self) -> usize {
        self.pool.free_count()
    }
}

fn frame_bytes(mem: &[u8], f: Frame) -> Option<&[u8]> {
    let start = usize::try_from(f.addr).ok()?;
    mem.get(start..start.checked_add(f.len as usize)?)
}

impl Ports for MemPorts {
    fn count(&self) -> usize {
        self.ports.len()
    }

    fn frame_size(&self) -> usize {
        self.frame_size
    }

    fn recv(&mut self, port: usize, out: &mut [Frame]) -> usize {
        let Some(p) = self.ports.get_mut(port) else {
            return 0;
        };
        let mut n = 0;
        for slot in out.iter_mut() {
            if p.incoming.is_empty() {
                break;
            }
            let Some(base) = self.pool.take(Owner::App) else {
                p.stats.alloc_failed += 1;
                break;
            };
            let Some(bytes) = p.incoming.pop_front() else {
                break;
            };
            let start = base as usize + MEM_RX_HEADROOM;
            // inject() checked that the frame fits after the headroom.
            if let Some(dst) = self.mem.get_mut(start..start + bytes.len()) {
                dst.copy_from_slice(&bytes);
            }
            *slot = Frame {
                addr: start as u64,
                len: u32::try_from(bytes.len()).unwrap_or(0),
            };
            n += 1;
        }
        p.stats.rx += n as u64;
        n
    }

    fn buf(&mut self, frame: Frame) -> &mut [u8] {
        let Some(chunk) = self.pool.chunk_of(frame.addr) else {
            return &mut [];
        };
        if self.pool.owner(chunk) != Some(Owner::App) {
            return &mut [];
        }
        let end = (self.pool.base(chunk) as usize).saturating_add(self.frame_size);
        self.mem
            .get_mut(frame.addr as usize..end)
            .unwrap_or(&mut [])
    }

    fn alloc(&mut self) -> Option<Frame> {
        let addr = self.pool.take(Owner::App)?;
        Some(Frame { addr, len: 0 })
    }

    fn send(&mut self, port: usize, frames: &[Frame]) -> usize {
        let Some(p) = self.ports.get_mut(port) else {
            for f in frames {
                self.pool.put(f.addr, Owner::App);
            }
            return 0;
        };
        let mut queued = 0;
        for &f in frames {
            let offset = f.addr & (self.frame_size as u64 - 1);
            let fits = f.len > 0 && offset + u64::from(f.len) <= self.frame_size as u64;
            if fits && self.pool.transfer(f.addr, Owner::App, Owner::Port) {
                p.sent.push(f);
                queued += 1;
            } else {
                self.pool.put(f.addr, Owner::App);
                p.stats.tx_dropped += 1;
            }
        }
        p.stats.tx += queued as u64;
        queued
    }

    fn release(&mut self, frames: &[Frame]) {
        for f in frames {
            self.pool.put(f.addr, Owner::App);
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn wait(&mut self, _timeout: std::time::Duration) -> std::io::Result<()> {
        // Injected frames are there at once: nothing to wait for.
        Ok(())
    }

    fn stats(&self, port: usize) -> PortStats {
        self.ports.get(port).map(|p| p.stats).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv_all(ports: &mut MemPorts, port: usize) -> Vec<Frame> {
        let mut out = [Frame { addr: 0, len: 0 }; 16];
        let n = ports.recv(port, &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn round_trip_keeps_bytes() {
        let mut p = MemPorts::new(2, 8, 2048);
        p.inject(0, b"hello");
        p.inject(0, b"world!");
        let frames = recv_all(&mut p, 0);
        assert_eq!(frames.len(), 2);
        assert_eq!(&p.buf(frames[0])[..5], b"hello");
        assert_eq!(frames[1].len, 6);
        assert_eq!(p.buf(frames[0]).len(), 2048 - MEM_RX_HEADROOM);
        p.buf(frames[1])[0] = b'W';
        assert_eq!(p.send(0, &frames), 2);
        assert_eq!(p.take_sent(0), vec![b"hello".to_vec(), b"World!".to_vec()]);
        assert_eq!(
            p.stats(0),
            PortStats {
                rx: 2,
                tx: 2,
                ..PortStats::default()
            }
        );
        assert_eq!(p.free_frames(), 8);
    }

    #[test]
    fn cross_port_send_moves_the_frame() {
        let mut p = MemPorts::new(2, 4, 2048);
        p.inject(0, &[1, 2, 3]);
        let frames = recv_all(&mut p, 0);
        assert_eq!(p.send(1, &frames), 1);
        assert!(p.take_sent(0).is_empty());
        assert_eq!(p.take_sent(1), vec![vec![1, 2, 3]]);
        assert_eq!(p.stats(1).tx, 1);
        assert_eq!(p.stats(0).rx, 1);
        assert_eq!(p.free_frames(), 4);
    }

    #[test]
    fn pool_exhaustion_stops_recv_and_is_counted() {
        let mut p = MemPorts::new(1, 2, 1024);
        for i in 0..3u8 {
            p.inject(0, &[i; 60]);
        }
        let frames = recv_all(&mut p, 0);
        assert_eq!(frames.len(), 2);
        assert_eq!(p.stats(0).alloc_failed, 1);
        assert_eq!(p.pending_rx(0), 1, "the third frame waits, not lost");
        assert_eq!(p.alloc(), None);
        p.release(&frames[..1]);
        let more = recv_all(&mut p, 0);
        assert_eq!(more.len(), 1);
        assert_eq!(p.buf(more[0])[..60], [2u8; 60]);
        p.release(&more);
        p.release(&frames[1..]);
        assert_eq!(p.free_frames(), 2);
    }

    #[test]
    fn nothing_leaks_and_misuse_is_refused() {
        let mut p = MemPorts::new(2, 8, 2048);
        let start = p.free_frames();
        let a = p.alloc().unwrap();
        assert_eq!(a.len, 0);
        assert_eq!(p.buf(a).len(), 2048);
        p.buf(a)[..4].copy_from_slice(b"abcd");
        let built = Frame { len: 4, ..a };
        p.inject(1, &[9; 100]);
        let rx = recv_all(&mut p, 1);
        assert_eq!(p.free_frames(), start - 2);

        // Too long for its chunk: dropped and released.
        let too_long = Frame {
            len: 2048 - MEM_RX_HEADROOM as u32 + 1,
            ..rx[0]
        };
        assert_eq!(p.send(0, &[built, too_long]), 1);
        assert_eq!(p.stats(0).tx_dropped, 1);
        assert_eq!(p.free_frames(), start - 1);

        // Frames no longer ours: refused, counted, pool unchanged.
        assert_eq!(p.send(0, &[rx[0]]), 0);
        assert_eq!(p.stats(0).tx_dropped, 2);
        p.release(&[rx[0], built]);
        assert!(p.buf(rx[0]).is_empty());
        assert!(p
            .buf(Frame {
                addr: u64::MAX,
                len: 1
            })
            .is_empty());
        assert_eq!(p.send(7, &[]), 0);
        assert_eq!(p.stats(7), PortStats::default());
        assert_eq!(p.free_frames(), start - 1);

        assert_eq!(p.take_sent(0), vec![b"abcd".to_vec()]);
        assert_eq!(p.free_frames(), start);
        p.flush().unwrap();
    }
}
