//! Shared frame, traffic and table builders for the engine benchmarks (`benches/engine.rs`)
//! and the memory report (`src/bin/memory.rs`).
//!
//! # How traffic reaches the engine
//! Translation rewrites a frame in place, so every packet has to be a fresh copy. A [`Trace`]
//! holds the packets of a run, one per 64-byte slot, in the order they are sent, grouped in
//! blocks of [`BATCH`] frames that arrive on one side. [`Replay`] copies each block into an
//! RX ring of [`RX_BUF`]-byte buffers (the AF_XDP frame size) and hands the ring to the
//! engine. That copy stands for the NIC's DMA into the RX ring: it is part of every measured
//! cost. The trace is read sequentially, as a NIC ring is, so the hardware prefetcher streams
//! it; what the engine itself touches at random (the connection table) is what the flow count
//! makes hot or cold.
//!
//! # Clock
//! The engine takes the time in seconds. A replay advances it by one every [`TICK`] packets,
//! about one second at the per-core rates measured here, so a connection's `last_seen` is
//! written about as often as in real traffic (once per second per active flow) instead of
//! never (a frozen clock) or always.

use std::fmt;
use std::net::Ipv4Addr;

use vipgate_nat::counters::DropReason;
use vipgate_nat::engine::{Engine, Verdict, Worker};
use vipgate_nat::maglev::Maglev;
use vipgate_nat::policy::{Backend, DnatRule, Ipv4Net, NatConfig, PatRule, Pool};
use vipgate_nat::state::tcp_flags::{ACK, PSH, SYN};
use vipgate_nat::{Proto, Side};
use vipgate_wire::testing;

pub use vipgate_nat::engine::BATCH;

/// The VIP clients connect to.
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The VIP's service port.
pub const VIP_PORT: u16 = 80;
/// The backends' port.
pub const BACKEND_PORT: u16 = 8080;
/// Backends of the pool behind the VIP: 198.18.0.1 to 198.18.0.8.
pub const BACKENDS: u8 = 8;
/// Public addresses of the PAT rule: 203.0.113.32 to 203.0.113.47.
pub const PAT_ADDRS: u8 = 16;
/// Payload of the established-flow segments: with 54 bytes of Ethernet, IPv4 and TCP headers
/// it makes a 64-byte frame.
pub const PAYLOAD: &[u8] = b"0123456789";
/// Bytes per frame in a [`Trace`].
pub const SLOT: usize = 64;
/// Bytes per RX buffer (an AF_XDP UMEM frame).
pub const RX_BUF: usize = 2048;
/// Packets per simulated second (see the crate documentation).
pub const TICK: u64 = 1 << 23;

/// Distinct client hosts: 198.51.100.1 to 198.51.100.254.
const CLIENT_HOSTS: u32 = 254;
/// Distinct internal hosts behind PAT: 198.18.1.1 to 198.18.4.254.
const INTERNAL_HOSTS: u32 = 4 * 254;
/// Ephemeral ports internal hosts pick from (Linux's default range, 32768 to 60999).
const EPHEMERAL: u32 = 28232;

/// Backend `i` (0-based) of the pool.
pub fn backend(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 1 + i)
}

/// Public endpoint of client flow `i`: 254 hosts of 198.51.100.0/24, then the next source
/// port, from 1024. Distinct for every `i` below 254 × 64512.
pub fn client(i: u32) -> (Ipv4Addr, u16) {
    let host = (1 + i % CLIENT_HOSTS) as u8;
    let port = 1024 + (i / CLIENT_HOSTS) as u16;
    (Ipv4Addr::new(198, 51, 100, host), port)
}

/// Internal endpoint `i` behind PAT: 1016 hosts of 198.18.1.0 to 198.18.4.255, each using
/// ephemeral ports scattered over 32768..61000 like a randomizing stack. Distinct for every
/// `i` below 1016 × 28232.
pub fn internal(i: u32) -> (Ipv4Addr, u16) {
    let h = i % INTERNAL_HOSTS;
    let k = i / INTERNAL_HOSTS;
    let addr = Ipv4Addr::new(198, 18, 1 + (h / 254) as u8, 1 + (h % 254) as u8);
    // 7919 is prime and does not divide 28232, so k -> k * 7919 mod 28232 is one-to-one.
    let port = 32768 + ((u64::from(k) * 7919) % u64::from(EPHEMERAL)) as u16;
    (addr, port)
}

/// The external server internal endpoint `i` connects to (HTTPS on 251 hosts).
pub fn external(i: u32) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(198, 51, 100, 1 + (i % 251) as u8), 443)
}

/// DNAT through a pool: `VIP:80/tcp` load balanced by Maglev over the [`BACKENDS`].
pub fn pool_config(capacity: u32, workers: u16) -> NatConfig {
    NatConfig {
        capacity,
        workers,
        vips: vec![VIP],
        pools: vec![Pool {
            name: "web".into(),
            vip: VIP,
            proto: Proto::Tcp,
            port: VIP_PORT,
            backends: (0..BACKENDS)
                .map(|i| Backend {
                    addr: backend(i),
                    port: BACKEND_PORT,
                    weight: 1,
                })
                .collect(),
            table_size: Maglev::DEFAULT_SIZE,
            when_empty: Default::default(),
            persistence: Default::default(),
            reset_on_down: false,
        }],
        ..NatConfig::default()
    }
}

/// A static DNAT rule: `VIP:80/tcp` to the first backend's port 8080.
pub fn static_config(capacity: u32) -> NatConfig {
    NatConfig {
        capacity,
        vips: vec![VIP],
        dnat: vec![DnatRule {
            vip: VIP,
            proto: Proto::Tcp,
            port_lo: VIP_PORT,
            port_hi: VIP_PORT,
            to: backend(0),
            to_port: Some(BACKEND_PORT),
        }],
        ..NatConfig::default()
    }
}

/// PAT: 198.18.0.0/15 leaves behind the [`PAT_ADDRS`] addresses 203.0.113.32 and up.
pub fn pat_config(capacity: u32) -> NatConfig {
    NatConfig {
        capacity,
        pat: vec![PatRule {
            from: Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 15)
                .into_iter()
                .collect(),
            to: (0..PAT_ADDRS)
                .map(|i| Ipv4Addr::new(203, 0, 113, 32 + i))
                .collect(),
        }],
        ..NatConfig::default()
    }
}

/// A TCP SYN from client flow `i` to the VIP.
pub fn client_syn(i: u32) -> Vec<u8> {
    let (c, cport) = client(i);
    testing::tcp(c, VIP, cport, VIP_PORT, SYN, b"")
}

/// A TCP SYN from internal endpoint `i` to its external server.
pub fn internal_syn(i: u32) -> Vec<u8> {
    let (h, hport) = internal(i);
    let (e, eport) = external(i);
    testing::tcp(h, e, hport, eport, SYN, b"")
}

/// Endpoints of an established DNAT connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Client address.
    pub client: Ipv4Addr,
    /// Client port.
    pub cport: u16,
    /// Backend the connection was given.
    pub backend: Ipv4Addr,
    /// Backend port.
    pub bport: u16,
}

impl Flow {
    /// A data segment client to VIP, as it arrives on the public side (64 bytes).
    pub fn orig_frame(&self) -> Vec<u8> {
        testing::tcp(self.client, VIP, self.cport, VIP_PORT, ACK | PSH, PAYLOAD)
    }

    /// A data segment backend to client, as it arrives on the private side (64 bytes).
    pub fn reply_frame(&self) -> Vec<u8> {
        testing::tcp(
            self.backend,
            self.client,
            self.bport,
            self.cport,
            ACK | PSH,
            PAYLOAD,
        )
    }
}

/// A setup or check step that did not go as a working engine makes it go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// A frame got another verdict than expected.
    Verdict {
        /// What was being done.
        step: &'static str,
        /// Flow or frame index.
        index: u64,
        /// The verdict.
        got: Verdict,
        /// The verdict expected.
        want: Verdict,
    },
    /// A translated frame does not carry valid checksums, or can't be parsed.
    Frame {
        /// Frame index.
        index: u64,
        /// What the verifier said.
        why: String,
    },
    /// Frames of a trace differ in length.
    FrameLength {
        /// The trace's frame length.
        want: usize,
        /// The frame's.
        got: usize,
    },
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Verdict {
                step,
                index,
                got,
                want,
            } => write!(
                f,
                "{step}, frame {index}: verdict {got:?}, expected {want:?}"
            ),
            SetupError::Frame { index, why } => write!(f, "frame {index}: {why}"),
            SetupError::FrameLength { want, got } => {
                write!(f, "frame of {got} bytes in a trace of {want}-byte frames")
            }
        }
    }
}

impl std::error::Error for SetupError {}

fn expect(step: &'static str, index: u64, got: Verdict, want: Verdict) -> Result<(), SetupError> {
    if got == want {
        Ok(())
    } else {
        Err(SetupError::Verdict {
            step,
            index,
            got,
            want,
        })
    }
}

/// Opens client flows `first..first + n` through `engine` with a full TCP handshake at
/// `now` (SYN from the public side, SYN-ACK from the backend, ACK), so that each ends
/// established. Returns the flows with the backend each was given.
///
/// # Errors
/// The first frame that was not forwarded as it should be.
pub fn open_flows(
    engine: &Engine,
    w: &mut Worker,
    first: u32,
    n: u32,
    now: u32,
) -> Result<Vec<Flow>, SetupError> {
    let mut flows = Vec::with_capacity(n as usize);
    for i in first..first + n {
        let mut syn = client_syn(i);
        let v = engine.process(w, &mut syn, Side::Public, now);
        expect("SYN", u64::from(i), v, Verdict::Forward(Side::Private))?;
        let l = testing::layout(&syn);
        let (backend, bport) = match l.transport {
            vipgate_wire::frame::Transport::Tcp { dport, .. } => (l.dst, dport),
            _ => {
                return Err(SetupError::Frame {
                    index: u64::from(i),
                    why: "translated SYN is not TCP".into(),
                })
            }
        };
        let (c, cport) = client(i);
        let flow = Flow {
            client: c,
            cport,
            backend,
            bport,
        };
        let mut syn_ack = testing::tcp(backend, c, bport, cport, SYN | ACK, b"");
        let v = engine.process(w, &mut syn_ack, Side::Private, now);
        expect("SYN-ACK", u64::from(i), v, Verdict::Forward(Side::Public))?;
        let mut ack = testing::tcp(c, VIP, cport, VIP_PORT, ACK, b"");
        let v = engine.process(w, &mut ack, Side::Public, now);
        expect("ACK", u64::from(i), v, Verdict::Forward(Side::Private))?;
        flows.push(flow);
    }
    Ok(flows)
}

/// SplitMix64: a small, fast, seeded generator, so every run sends the same traffic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The packets of a run, in blocks of [`BATCH`] frames of one length that arrive on one side.
#[derive(Clone, Debug)]
pub struct Trace {
    bytes: Vec<u8>,
    frame_len: usize,
    sides: Vec<Side>,
}

impl Trace {
    /// An empty trace of `frame_len`-byte frames (at most [`SLOT`]).
    fn new(frame_len: usize, frames: usize) -> Trace {
        Trace {
            bytes: Vec::with_capacity(frames * SLOT),
            frame_len: frame_len.min(SLOT),
            sides: Vec::with_capacity(frames / BATCH + 1),
        }
    }

    fn push(&mut self, frame: &[u8]) -> Result<(), SetupError> {
        if frame.len() != self.frame_len {
            return Err(SetupError::FrameLength {
                want: self.frame_len,
                got: frame.len(),
            });
        }
        let at = self.bytes.len();
        self.bytes.extend_from_slice(frame);
        self.bytes.resize(at + SLOT, 0);
        Ok(())
    }

    /// `packets` (rounded up to whole blocks) data segments of `flows` drawn uniformly at
    /// random with `seed`: even blocks client to VIP from the public side, odd blocks
    /// backend to client from the private side, as a worker polling both ports sees them.
    ///
    /// # Errors
    /// [`SetupError::FrameLength`] if a frame is not 64 bytes (it can't happen with
    /// [`Flow`]'s frames).
    pub fn established(flows: &[Flow], packets: usize, seed: u64) -> Result<Trace, SetupError> {
        let blocks = packets.div_ceil(BATCH);
        let mut orig = Vec::with_capacity(flows.len() * SLOT);
        let mut reply = Vec::with_capacity(flows.len() * SLOT);
        for f in flows {
            orig.extend_from_slice(&f.orig_frame());
            reply.extend_from_slice(&f.reply_frame());
        }
        let len = SLOT;
        let mut t = Trace::new(len, blocks * BATCH);
        let mut rng = Rng::new(seed);
        for b in 0..blocks {
            let (side, frames) = if b % 2 == 0 {
                (Side::Public, &orig)
            } else {
                (Side::Private, &reply)
            };
            t.sides.push(side);
            for _ in 0..BATCH {
                let i = rng.below(flows.len() as u64) as usize * len;
                t.push(frames.get(i..i + len).unwrap_or_default())?;
            }
        }
        Ok(t)
    }

    /// The frames `frame(0..n)` (`n` rounded up to whole blocks), all arriving on `side`.
    ///
    /// # Errors
    /// [`SetupError::FrameLength`] if the frames differ in length or are longer than
    /// [`SLOT`].
    pub fn from_fn(
        n: u32,
        side: Side,
        mut frame: impl FnMut(u32) -> Vec<u8>,
    ) -> Result<Trace, SetupError> {
        let blocks = (n as usize).div_ceil(BATCH);
        let first = frame(0);
        if first.len() > SLOT {
            return Err(SetupError::FrameLength {
                want: SLOT,
                got: first.len(),
            });
        }
        let mut t = Trace::new(first.len(), blocks * BATCH);
        t.push(&first)?;
        for i in 1..(blocks * BATCH) as u32 {
            t.push(&frame(i))?;
        }
        t.sides = vec![side; blocks];
        Ok(t)
    }

    /// Frames in the trace.
    pub fn frames(&self) -> usize {
        self.sides.len() * BATCH
    }

    /// Blocks of [`BATCH`] frames in the trace.
    pub fn blocks(&self) -> usize {
        self.sides.len()
    }

    /// Bytes of each frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// The side block `b` arrives on.
    fn side(&self, b: usize) -> Side {
        self.sides.get(b).copied().unwrap_or(Side::Public)
    }

    /// The slots of block `b`.
    fn block(&self, b: usize) -> &[u8] {
        self.bytes
            .get(b * BATCH * SLOT..(b + 1) * BATCH * SLOT)
            .unwrap_or_default()
    }
}

/// The side a frame arriving on `side` leaves on, for the traffic built here.
fn across(side: Side) -> Side {
    match side {
        Side::Public => Side::Private,
        Side::Private => Side::Public,
    }
}

/// Copies block `b` of `trace` into the RX ring; the ring's buffers, cut to the frames.
///
/// Each copy moves a whole [`SLOT`] (a frame and its padding) as one fixed-size block, so it
/// compiles to a few vector moves: a NIC's DMA costs the CPU nothing, and the copy that
/// stands in for it should cost as little as it can.
#[inline]
fn load<'r>(trace: &Trace, ring: &'r mut [u8], b: usize) -> [&'r mut [u8]; BATCH] {
    let len = trace.frame_len;
    let mut bufs = ring.chunks_exact_mut(RX_BUF);
    let mut slots = trace.block(b).chunks_exact(SLOT);
    std::array::from_fn(|_| {
        let buf = bufs.next().unwrap_or_default();
        if let (Ok(dst), Some(Ok(src))) = (
            <&mut [u8; SLOT]>::try_from(buf.get_mut(..SLOT).unwrap_or_default()),
            slots.next().map(<&[u8; SLOT]>::try_from),
        ) {
            *dst = *src;
        }
        buf.get_mut(..len).unwrap_or_default()
    })
}

/// Sends a [`Trace`] through an engine block by block, round and round, copying each block
/// into an RX ring first (see the crate documentation).
#[derive(Debug)]
pub struct Replay {
    trace: Trace,
    ring: Vec<u8>,
    verdicts: [Verdict; BATCH],
    block: usize,
    sent: u64,
    start: u32,
}

impl Replay {
    /// A replay of `trace` from its first block, with the clock at `now`.
    pub fn new(trace: Trace, now: u32) -> Replay {
        Replay {
            trace,
            ring: vec![0; BATCH * RX_BUF],
            verdicts: [Verdict::Drop(DropReason::Truncated); BATCH],
            block: 0,
            sent: 0,
            start: now,
        }
    }

    /// Starts again from the first block with the clock at `now` (for a fresh engine).
    pub fn rewind(&mut self, now: u32) {
        self.block = 0;
        self.sent = 0;
        self.start = now;
    }

    /// The trace.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The clock of the next block.
    pub fn now(&self) -> u32 {
        self.start
            .wrapping_add(u32::try_from(self.sent / TICK).unwrap_or(u32::MAX))
    }

    /// The next block to send, moving on.
    #[inline]
    fn next_block(&mut self) -> usize {
        let b = self.block;
        self.block = if b + 1 >= self.trace.blocks() {
            0
        } else {
            b + 1
        };
        b
    }

    /// Sends the next block through [`Engine::process_batch`]; the number of frames.
    #[inline]
    pub fn batch(&mut self, engine: &Engine, w: &mut Worker) -> usize {
        let now = self.now();
        let b = self.next_block();
        let side = self.trace.side(b);
        let mut frames = load(&self.trace, &mut self.ring, b);
        engine.process_batch(w, &mut frames, side, now, &mut self.verdicts);
        self.sent += BATCH as u64;
        BATCH
    }

    /// Sends the next block one frame at a time through [`Engine::process`]; the number of
    /// frames.
    #[inline]
    pub fn single(&mut self, engine: &Engine, w: &mut Worker) -> usize {
        let now = self.now();
        let b = self.next_block();
        let side = self.trace.side(b);
        let frames = load(&self.trace, &mut self.ring, b);
        for (frame, v) in frames.into_iter().zip(self.verdicts.iter_mut()) {
            *v = engine.process(w, frame, side, now);
        }
        self.sent += BATCH as u64;
        BATCH
    }

    /// Only copies the next block into the RX ring, as [`Replay::batch`] does before calling
    /// the engine: the share of the copy in a benchmark's time. The number of frames.
    #[inline]
    pub fn copy_only(&mut self) -> usize {
        let b = self.next_block();
        let frames = load(&self.trace, &mut self.ring, b);
        std::hint::black_box(frames);
        self.sent += BATCH as u64;
        BATCH
    }

    /// Sends `blocks` blocks with [`Replay::batch`] and checks every frame: forwarded to
    /// the other side, with checksums that verify after translation.
    ///
    /// # Errors
    /// The first frame that was not.
    pub fn checked(
        &mut self,
        engine: &Engine,
        w: &mut Worker,
        blocks: usize,
    ) -> Result<(), SetupError> {
        for _ in 0..blocks {
            let side = self.trace.side(self.block);
            let first = self.sent;
            self.batch(engine, w);
            let len = self.trace.frame_len;
            for (k, (buf, v)) in self
                .ring
                .chunks_exact(RX_BUF)
                .zip(self.verdicts.iter())
                .enumerate()
            {
                let index = first + k as u64;
                expect("replay", index, *v, Verdict::Forward(across(side)))?;
                testing::verify_checksums(buf.get(..len).unwrap_or_default())
                    .map_err(|why| SetupError::Frame { index, why })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            assert!(seen.insert(client(i)), "client {i}");
        }
        seen.clear();
        for i in 0..200_000 {
            assert!(seen.insert(internal(i)), "internal {i}");
        }
    }

    #[test]
    fn frames_are_64_bytes() {
        let f = Flow {
            client: client(3).0,
            cport: client(3).1,
            backend: backend(1),
            bport: BACKEND_PORT,
        };
        assert_eq!(f.orig_frame().len(), SLOT);
        assert_eq!(f.reply_frame().len(), SLOT);
    }

    #[test]
    fn established_replay_translates_both_directions() {
        let engine = Engine::new(pool_config(1024, 1)).unwrap();
        let mut w = engine.worker(0);
        let flows = open_flows(&engine, &mut w, 0, 100, 1).unwrap();
        assert!(flows.iter().any(|f| f.backend != flows[0].backend));
        let trace = Trace::established(&flows, 1000, 7).unwrap();
        assert_eq!(trace.frames(), 1024);
        let (blocks, frames) = (trace.blocks(), trace.frames() as u64);
        let mut r = Replay::new(trace, 2);
        r.checked(&engine, &mut w, blocks + 1).unwrap();
        let before = w.counters.forwarded;
        for _ in 0..blocks {
            r.single(&engine, &mut w);
        }
        assert_eq!(w.counters.forwarded - before, frames);
        assert_eq!(w.counters.total_drops(), 0);
        assert_eq!(engine.table().len(), 100);
    }

    #[test]
    fn syn_traces_create_connections_and_mappings() {
        let engine = Engine::new(pat_config(4096)).unwrap();
        let mut w = engine.worker(0);
        let trace = Trace::from_fn(500, Side::Private, internal_syn).unwrap();
        let (blocks, frames) = (trace.blocks(), trace.frames() as u64);
        let mut r = Replay::new(trace, 1);
        r.checked(&engine, &mut w, blocks).unwrap();
        assert_eq!(w.counters.mappings_created, frames);
        assert_eq!(w.counters.conns_created, frames);
        // A fresh engine takes the same trace again from the start.
        let engine = Engine::new(pat_config(4096)).unwrap();
        let mut w = engine.worker(0);
        r.rewind(1);
        r.checked(&engine, &mut w, blocks).unwrap();
        assert_eq!(w.counters.conns_created, frames);

        // A replayed SYN finds its connection: a trace opens connections once per engine.
        let engine = Engine::new(static_config(4096)).unwrap();
        let mut w = engine.worker(0);
        let trace = Trace::from_fn(64, Side::Public, client_syn).unwrap();
        let mut r = Replay::new(trace, 1);
        r.checked(&engine, &mut w, 4).unwrap();
        assert_eq!(w.counters.conns_created, 64);
        assert_eq!(w.counters.forwarded, 128);
    }

    #[test]
    fn clock_advances_per_tick() {
        let trace = Trace::from_fn(32, Side::Public, client_syn).unwrap();
        let mut r = Replay::new(trace, 5);
        assert_eq!(r.now(), 5);
        r.sent = TICK;
        assert_eq!(r.now(), 6);
    }

    #[test]
    fn mixed_lengths_are_refused() {
        let e = Trace::from_fn(40, Side::Public, |i| {
            if i < 10 {
                client_syn(i)
            } else {
                Flow {
                    client: client(i).0,
                    cport: client(i).1,
                    backend: backend(0),
                    bport: 1,
                }
                .orig_frame()
            }
        })
        .unwrap_err();
        assert_eq!(e, SetupError::FrameLength { want: 54, got: 64 });
    }
}
