//! Packet I/O for vipgate behind one small trait, [`Ports`]: a worker's set of ports sharing one
//! buffer pool, so a frame received on one port can be sent on another without a copy.
//!
//! Two implementations:
//! - [`MemPorts`]: in memory, for tests and benchmarks (no privileges, no kernel).
//! - [`XdpPorts`]: AF_XDP sockets on the rings of `xdpilone`, fed by a six-instruction XDP
//!   redirect program that [`XdpProgram`] loads and attaches through a `bpf_link` (so the
//!   program is detached when the process exits, even on `kill -9`).
//!
//! Frames are identified by an opaque address ([`Frame::addr`]); the bytes live in the pool
//! and are reached through [`Ports::buf`]. A frame is owned by exactly one party at a time:
//! the pool, the caller (after `recv` or `alloc`), or a port (after `send`, until the
//! transmission completes). Frames the caller does not own are refused, never touched.

mod bpf;
mod iface;
mod mem;
mod pool;
mod xsk;

pub use bpf::{XdpMode, XdpProgram};
pub use iface::{interface_index, interface_mac, rx_queue_count, FrameSender, LinkAddresses};
pub use mem::{MemPorts, MEM_RX_HEADROOM};
pub use xsk::{BindMode, KernelStats, XdpOptions, XdpPorts};

/// A frame buffer of a worker's pool: `addr` is opaque to users, `len` the frame's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Where the frame starts in the pool; only meaningful to the [`Ports`] that issued it.
    pub addr: u64,
    /// The frame's length in bytes.
    pub len: u32,
}

/// Per-port counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub rx: u64,
    /// Frames queued for transmission.
    pub tx: u64,
    /// Frames given to `send` that could not be queued (ring full, bad length, not owned).
    pub tx_dropped: u64,
    /// Times the port needed buffers for reception and the pool was empty.
    pub alloc_failed: u64,
}

/// A worker's packet ports: one per interface, sharing one buffer pool, so a frame received
/// on one port can be sent on another without a copy.
pub trait Ports {
    /// The number of ports.
    fn count(&self) -> usize;
    /// The size of each buffer of the pool, in bytes.
    fn frame_size(&self) -> usize;
    /// Receives up to out.len() frames from `port`; returns how many it wrote to `out`.
    fn recv(&mut self, port: usize, out: &mut [Frame]) -> usize;
    /// The frame's whole buffer (from the frame's start to the end of its chunk); the first
    /// `frame.len` bytes are the frame.  Panics never; returns an empty slice for a bad addr.
    fn buf(&mut self, frame: Frame) -> &mut [u8];
    /// A free buffer (len 0) for a frame the caller builds; None when the pool is empty.
    fn alloc(&mut self) -> Option<Frame>;
    /// Queues frames (each with its len) for transmission on `port`; ownership passes to the
    /// port. Returns how many were queued; the rest are released and counted in tx_dropped.
    fn send(&mut self, port: usize, frames: &[Frame]) -> usize;
    /// Gives frames back to the pool unsent.
    fn release(&mut self, frames: &[Frame]);
    /// Once per poll-loop iteration: reap TX completions, refill fill rings, wake the kernel
    /// where need_wakeup asks for it. No allocation.
    ///
    /// # Errors
    /// A wakeup failed for a reason that will not pass by itself (not EAGAIN, EBUSY, ENOBUFS,
    /// ENETDOWN or EINTR).
    fn flush(&mut self) -> std::io::Result<()>;
    /// The counters of `port` (zeros for a port that does not exist).
    fn stats(&self, port: usize) -> PortStats;
    /// Sleeps until a frame may be waiting on some port, or `timeout` passes. An idle worker
    /// calls it between empty passes: one system call per idle period, never per frame.
    ///
    /// # Errors
    /// The wait failed for a reason other than a signal.
    fn wait(&mut self, timeout: std::time::Duration) -> std::io::Result<()>;
}
