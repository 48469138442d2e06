//! AF_XDP ports: one UMEM per worker, one socket per (interface, queue), rings from xdpilone.

use std::io;
use std::num::NonZeroU32;
use std::ptr::NonNull;

use xdpilone::xdp::XdpDesc;
use xdpilone::{
    DeviceQueue, Errno, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User,
};

use crate::bpf::{XdpMode, XdpProgram};
use crate::pool::{FramePool, Owner};
use crate::{Frame, PortStats, Ports};

/// Not in every libc: socket option level of AF_XDP.
const SOL_XDP: libc::c_int = 283;
const XDP_OPTIONS: libc::c_int = 8;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;
/// Linux 6.17+: how many frames one copy-mode sendto() may transmit (default 32).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// How many frames one copy-mode sendto() transmits when the budget cannot be raised.
const DEFAULT_TX_BUDGET: u32 = 32;
/// Shorter frames are refused by `send`: the kernel would reject the descriptor and never
/// complete it, losing the buffer.
const MIN_FRAME: u32 = 14;

/// Sizes of an [`XdpPorts`]' UMEM and rings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpOptions {
    /// Must match the mode every program was attached in. `Drv` binds zero-copy when the driver
    /// supports it and copy mode otherwise; `Skb` always binds copy mode.
    pub mode: XdpMode,
    /// UMEM frames, at least `2 * ring * ports`.
    pub frames: u32,
    /// Bytes per frame: 2048 or 4096.
    pub frame_size: u32,
    /// Entries of each RX, TX, fill and completion ring: a power of two, 64 to 16384.
    pub ring: u32,
}

impl Default for XdpOptions {
    fn default() -> Self {
        XdpOptions {
            mode: XdpMode::Skb,
            frames: 4096,
            frame_size: 2048,
            ring: 1024,
        }
    }
}

/// How the kernel moves frames between the NIC and the UMEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindMode {
    /// The kernel copies each frame (always available; the only mode on veth).
    Copy,
    /// The driver DMAs straight into the UMEM.
    ZeroCopy,
}

/// Kernel-side counters of one AF_XDP socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Frames dropped for reasons other than a full RX ring or an empty fill ring (e.g. too
    /// long for a frame).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full (the worker is too slow).
    pub rx_ring_full: u64,
    /// Times a frame found the fill ring empty.
    pub rx_fill_ring_empty: u64,
    /// Invalid descriptors the kernel found in the TX ring.
    pub tx_invalid_descs: u64,
}

/// Page-aligned anonymous memory registered as the UMEM.
struct UmemArea {
    ptr: NonNull<u8>,
    len: usize,
}

impl UmemArea {
    fn new(len: usize) -> io::Result<UmemArea> {
        // SAFETY: anonymous private mapping; MAP_POPULATE so the first frames do not fault.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(UmemArea { ptr, len })
    }

    fn as_slice_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new(); the kernel keeps its own pin on the
        // pages of a registered UMEM until the last socket using it closes.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

struct XdpPort {
    rx: RingRx,
    tx: RingTx,
    /// Fill and completion rings of this (interface, queue).
    dev: DeviceQueue,
    user: User,
    _socket: Socket,
    ifname: String,
    queue: u32,
    stats: PortStats,
}

/// A worker's AF_XDP ports: one socket per `(program, queue)` given to [`XdpPorts::open`], all
/// sharing one UMEM, so a frame received on one port is sent on another without a copy.
///
/// Per packet: no allocation, no lock, no system call; `flush` makes the per-batch wakeups.
/// `Send`: it may be opened on one thread and moved to the worker thread (but open it on a
/// thread in the network namespace the programs were attached from).
pub struct XdpPorts {
    // Field order is drop order: rings and sockets, then the UMEM socket, then its memory.
    ports: Vec<XdpPort>,
    _umem: Umem,
    area: UmemArea,
    pool: FramePool,
    frame_size: u32,
    ring: u32,
    tx_budget: u32,
    bind_mode: BindMode,
    /// One entry per port's socket, built once so an idle wait allocates nothing.
    pollfds: Vec<libc::pollfd>,
}

// SAFETY: the only non-Send parts are raw pointers (in `Umem` and `UmemArea`) to the UMEM
// mapping this value owns and unmaps on drop; the rings are Send in xdpilone, the sockets are
// plain fds, and nothing is tied to the creating thread. Not Sync: all access goes through
// &mut self.
unsafe impl Send for XdpPorts {}

fn errno_io(e: Errno) -> io::Error {
    // xdpilone reports a few errors as negative errno values.
    io::Error::from_raw_os_error(e.get_raw().abs())
}

fn bind_hint(errno: Option<i32>, ifname: &str, queue: u32) -> String {
    match errno {
        Some(libc::EBUSY) => {
            format!("; another AF_XDP socket is bound to {ifname} queue {queue}")
        }
        Some(libc::EINVAL) => format!(
            "; does {ifname} have a queue {queue}? (`ethtool -l {ifname}`; veth: numrxqueues)"
        ),
        Some(libc::EOPNOTSUPP) => format!("; {ifname} does not support this AF_XDP mode"),
        e => memlock_hint(e).to_owned(),
    }
}

fn memlock_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::ENOMEM | libc::ENOBUFS | libc::EPERM) => {
            "; locked memory: run as root or with CAP_IPC_LOCK (or raise RLIMIT_MEMLOCK)"
        }
        _ => "",
    }
}

impl XdpPorts {
    /// Opens one AF_XDP socket per `(program, queue)` (port `i` is `ports[i]`), all on one new
    /// UMEM, fills every fill ring, and registers each socket in its program's XSKMAP.
    ///
    /// # Errors
    /// Bad options (with what would be accepted), a mode that differs from a program's, a
    /// duplicate `(interface, queue)`, or a failed UMEM registration or bind (naming the
    /// interface, queue and mode, with the likely cause).
    pub fn open(ports: &[(&XdpProgram, u32)], opts: &XdpOptions) -> io::Result<XdpPorts> {
        validate(ports, opts)?;
        match opts.mode {
            XdpMode::Skb => Self::build(ports, opts, BindMode::Copy),
            // Zero-copy is all or nothing for a shared UMEM (later sockets inherit the first's
            // mode), so the fallback rebuilds everything in copy mode. On veth the zero-copy
            // bind fails at once with EOPNOTSUPP, so this costs one failed bind.
            XdpMode::Drv => Self::build(ports, opts, BindMode::ZeroCopy)
                .or_else(|_| Self::build(ports, opts, BindMode::Copy)),
        }
    }

    fn build(ports: &[(&XdpProgram, u32)], opts: &XdpOptions, want: BindMode) -> io::Result<Self> {
        let mode_name = match want {
            BindMode::Copy => "copy",
            BindMode::ZeroCopy => "zero-copy",
        };
        let len = opts.frames as usize * opts.frame_size as usize;
        let area = UmemArea::new(len).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("AF_XDP: mapping the UMEM ({len} bytes): {e}"),
            )
        })?;
        let config = UmemConfig {
            fill_size: opts.ring,
            complete_size: opts.ring,
            frame_size: opts.frame_size,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `area` is page aligned, `len` bytes long, and outlives the Umem (both move
        // into the returned value, `umem` declared first so dropped first).
        let umem = unsafe { Umem::new(config, area.as_slice_ptr()) }.map_err(|e| {
            let e = errno_io(e);
            io::Error::new(
                e.kind(),
                format!(
                    "AF_XDP: registering the UMEM ({len} bytes): {e}{}",
                    memlock_hint(e.raw_os_error())
                ),
            )
        })?;

        let ring = NonZeroU32::new(opts.ring);
        let mut out = Vec::with_capacity(ports.len());
        // Copy-mode only: zero-copy transmits from the driver's own NAPI loop.
        let mut budget_raised = want == BindMode::Copy;
        for (i, &(prog, queue)) in ports.iter().enumerate() {
            let ifname = prog.ifname();
            let ctx = |step: &str, e: io::Error| {
                let hint = bind_hint(e.raw_os_error(), ifname, queue);
                io::Error::new(
                    e.kind(),
                    format!("AF_XDP {step} on {ifname} queue {queue} ({mode_name}): {e}{hint}"),
                )
            };
            let mut info = IfInfo::invalid();
            info.from_ifindex(prog.ifindex())
                .map_err(|e| ctx("interface lookup", errno_io(e)))?;
            info.set_queue(queue);
            // The first socket is the UMEM's own; the others share it, each with its own fill
            // and completion rings (one pair per interface queue).
            let socket = if i == 0 {
                Socket::with_shared(&info, &umem)
            } else {
                Socket::new(&info)
            }
            .map_err(|e| ctx("socket", errno_io(e)))?;
            let dev = umem
                .fq_cq(&socket)
                .map_err(|e| ctx("fill/completion rings", errno_io(e)))?;
            // The kernel refuses mode flags on sockets that share a UMEM: they inherit them.
            let bind_flags = if i == 0 {
                SocketConfig::XDP_BIND_NEED_WAKEUP
                    | match want {
                        BindMode::Copy => SocketConfig::XDP_BIND_COPY,
                        BindMode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
                    }
            } else {
                0
            };
            let user = umem
                .rx_tx(
                    &socket,
                    &SocketConfig {
                        rx_size: ring,
                        tx_size: ring,
                        bind_flags,
                    },
                )
                .map_err(|e| ctx("rx/tx rings", errno_io(e)))?;
            let rx = user.map_rx().map_err(|e| ctx("rx ring map", errno_io(e)))?;
            let tx = user.map_tx().map_err(|e| ctx("tx ring map", errno_io(e)))?;
            umem.bind(&user).map_err(|e| ctx("bind", errno_io(e)))?;
            budget_raised = budget_raised && raise_tx_budget(user.as_raw_fd(), opts.ring);
            prog.set_socket(queue, user.as_raw_fd())
                .map_err(|e| ctx("XSKMAP update", e))?;
            out.push(XdpPort {
                rx,
                tx,
                dev,
                user,
                _socket: socket,
                ifname: ifname.to_owned(),
                queue,
                stats: PortStats::default(),
            });
        }

        let bind_mode = match out.first() {
            Some(p) if is_zero_copy(p.user.as_raw_fd()) => BindMode::ZeroCopy,
            _ => BindMode::Copy,
        };
        if bind_mode != want {
            return Err(io::Error::other(format!(
                "AF_XDP: asked for {mode_name} but the kernel bound {bind_mode:?}"
            )));
        }
        let mut ports = XdpPorts {
            ports: out,
            _umem: umem,
            area,
            pool: FramePool::new(opts.frames, opts.frame_size),
            frame_size: opts.frame_size,
            ring: opts.ring,
            tx_budget: if budget_raised {
                opts.ring
            } else {
                DEFAULT_TX_BUDGET
            },
            bind_mode,
            pollfds: Vec::new(),
        };
        ports.pollfds = ports
            .ports
            .iter()
            .map(|p| libc::pollfd {
                fd: p.user.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        ports.refill();
        Ok(ports)
    }

    /// Zero-copy or copy: decided once for the whole UMEM by the first socket's bind.
    pub fn bind_mode(&self) -> BindMode {
        self.bind_mode
    }

    /// Buffers in the pool: neither in a ring, nor received, allocated or in flight.
    pub fn free_frames(&self) -> usize {
        self.pool.free_count()
    }

    /// The interface name and queue of `port`.
    pub fn port_name(&self, port: usize) -> Option<(&str, u32)> {
        self.ports.get(port).map(|p| (p.ifname.as_str(), p.queue))
    }

    /// The kernel's counters for `port`'s socket (one getsockopt; not for the packet path).
    ///
    /// # Errors
    /// `NotFound` for a port that does not exist; the getsockopt error otherwise.
    pub fn kernel_stats(&self, port: usize) -> io::Result<KernelStats> {
        let p = self
            .ports
            .get(port)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no port {port}")))?;
        let s = p.user.statistics_v2().map_err(errno_io)?;
        Ok(KernelStats {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
            tx_invalid_descs: s.tx_invalid_descs,
        })
    }

    /// Tops up every fill ring from the pool; counts a port's shortfall in alloc_failed.
    fn refill(&mut self) {
        let ring = self.ring;
        let pool = &mut self.pool;
        for p in self.ports.iter_mut() {
            // Two rounds: xdpilone serves a reservation from its cached view of the kernel's
            // consumer head, which only refreshes once the cached space is used up.
            for _ in 0..2 {
                let mut w = p.dev.fill(ring);
                let cap = w.capacity();
                if cap == 0 {
                    break;
                }
                // Bounded by `cap` so the zip inside `insert` never pulls a chunk it cannot place.
                let n = w.insert(PoolDrain { pool, left: cap });
                // Nothing to publish from an empty pool: dropping `w` cancels the reservation
                // without touching the ring's producer line, and the shortfall is still counted.
                if n > 0 {
                    w.commit();
                }
                if n < cap {
                    p.stats.alloc_failed += 1;
                    break;
                }
            }
        }
    }
}

/// Yields up to `left` free chunks, handing them to the kernel.
struct PoolDrain<'a> {
    pool: &'a mut FramePool,
    left: u32,
}

impl Iterator for PoolDrain<'_> {
    type Item = u64;
    #[inline]
    fn next(&mut self) -> Option<u64> {
        self.left = self.left.checked_sub(1)?;
        self.pool.take(Owner::Port)
    }
}

fn validate(ports: &[(&XdpProgram, u32)], opts: &XdpOptions) -> io::Result<()> {
    let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
    if ports.is_empty() {
        return bad("AF_XDP: no ports to open; expected at least one (program, queue)".into());
    }
    if opts.frame_size != 2048 && opts.frame_size != 4096 {
        return bad(format!(
            "AF_XDP frame_size {} is not supported; expected 2048 or 4096",
            opts.frame_size
        ));
    }
    if !opts.ring.is_power_of_two() || !(64..=16384).contains(&opts.ring) {
        return bad(format!(
            "AF_XDP ring {} is not supported; expected a power of two from 64 to 16384",
            opts.ring
        ));
    }
    let need = u64::from(opts.ring) * 2 * ports.len() as u64;
    if u64::from(opts.frames) < need || !opts.frames.is_power_of_two() {
        return bad(format!(
            "AF_XDP frames {} is too few; expected a power of two >= 2 * ring * ports = {need}",
            opts.frames
        ));
    }
    for (i, &(prog, queue)) in ports.iter().enumerate() {
        if prog.mode() != opts.mode {
            return bad(format!(
                "AF_XDP: the program on {} is attached in {} mode but the ports are opened for {}",
                prog.ifname(),
                prog.mode(),
                opts.mode
            ));
        }
        if queue >= prog.queues() {
            return bad(format!(
                "AF_XDP: queue {queue} of {} is outside its program's XSKMAP; expected 0 to {}",
                prog.ifname(),
                prog.queues() - 1
            ));
        }
        let dup = ports
            .iter()
            .take(i)
            .any(|&(p, q)| q == queue && p.ifindex() == prog.ifindex());
        if dup {
            return bad(format!(
                "AF_XDP: {} queue {queue} is listed twice; expected one port per (interface, queue)",
                prog.ifname()
            ));
        }
    }
    Ok(())
}

/// Lets one copy-mode wakeup transmit a whole ring (Linux 6.17+; older kernels refuse the
/// option and `flush` wakes the kernel once per 32 frames instead).
fn raise_tx_budget(fd: i32, budget: u32) -> bool {
    // SAFETY: setsockopt with a u32 value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    rc == 0
}

fn is_zero_copy(fd: i32) -> bool {
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `flags`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    rc == 0 && flags & XDP_OPTIONS_ZEROCOPY != 0
}

/// Errors a wakeup may return that pass by themselves (ring or device busy, link down).
fn transient(errno: Option<i32>) -> bool {
    matches!(
        errno,
        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::EINTR | libc::ENETDOWN)
    )
}

impl XdpPort {
    /// Wakes the kernel to transmit while it asks for it and makes progress: a copy-mode
    /// sendto() moves at most `budget` frames, so a full ring may take several.
    fn kick_tx(&mut self, rounds: u32) -> io::Result<()> {
        for _ in 0..rounds {
            let before = self.tx.pending();
            if before == 0 || !self.tx.needs_wakeup() {
                return Ok(());
            }
            // SAFETY: zero-length sendto on our own AF_XDP socket; no buffers passed.
            let rc = unsafe {
                libc::sendto(
                    self.tx.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            self.wakeup_result(rc, "TX")?;
            if self.tx.pending() >= before {
                return Ok(());
            }
        }
        Ok(())
    }

    fn wake_fill(&mut self) -> io::Result<()> {
        if !self.dev.needs_wakeup() {
            return Ok(());
        }
        // SAFETY: zero-length non-blocking recvfrom on our own AF_XDP socket.
        let rc = unsafe {
            libc::recvfrom(
                self.dev.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        self.wakeup_result(rc, "RX")
    }

    /// A wakeup's return code as a result: transient refusals are fine (the next pass tries
    /// again); anything else names the port.
    fn wakeup_result(&self, rc: libc::ssize_t, ring: &str) -> io::Result<()> {
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if transient(e.raw_os_error()) {
            return Ok(());
        }
        Err(io::Error::new(
            e.kind(),
            format!(
                "AF_XDP {ring} wakeup on {} queue {}: {e}",
                self.ifname, self.queue
            ),
        ))
    }
}

impl Ports for XdpPorts {
    fn count(&self) -> usize {
        self.ports.len()
    }

    fn frame_size(&self) -> usize {
        self.frame_size as usize
    }

    fn recv(&mut self, port: usize, out: &mut [Frame]) -> usize {
        let Some(p) = self.ports.get_mut(port) else {
            return 0;
        };
        let mut n = 0usize;
        // Two rounds for the same cached-head reason as `refill`.
        for _ in 0..2 {
            let Some(rest) = out.get_mut(n..) else {
                break;
            };
            if rest.is_empty() {
                break;
            }
            let mut reader = p.rx.receive(u32::try_from(rest.len()).unwrap_or(u32::MAX));
            let cap = reader.capacity() as usize;
            for slot in rest.iter_mut() {
                let Some(desc) = reader.read() else {
                    break;
                };
                // The kernel only returns chunks we put in a fill ring.
                if self.pool.transfer(desc.addr, Owner::Port, Owner::App) {
                    *slot = Frame {
                        addr: desc.addr,
                        len: desc.len,
                    };
                    n += 1;
                }
            }
            reader.release();
            if cap == 0 || cap == rest.len() {
                break;
            }
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
        let end = self.pool.base(chunk) + u64::from(self.frame_size);
        let (start, len) = (frame.addr as usize, (end - frame.addr) as usize);
        // SAFETY: chunk_of() put [addr, end) inside the UMEM mapping; the chunk is the
        // caller's (the kernel neither reads nor writes it until it is sent or put in a fill
        // ring), and &mut self prevents a second live slice from this value.
        unsafe { std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(start), len) }
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
        let fs = u64::from(self.frame_size);
        let mut queued = 0usize;
        let mut next = 0usize;
        // Two rounds: the first reservation may come from a stale cached consumer head.
        for _ in 0..2 {
            let Some(rest) = frames.get(next..) else {
                break;
            };
            if rest.is_empty() {
                break;
            }
            let mut w = p.tx.transmit(u32::try_from(rest.len()).unwrap_or(u32::MAX));
            let mut room = w.capacity();
            for &f in rest {
                if room == 0 {
                    break;
                }
                next += 1;
                let fits = f.len >= MIN_FRAME && (f.addr & (fs - 1)) + u64::from(f.len) <= fs;
                if fits && self.pool.transfer(f.addr, Owner::App, Owner::Port) {
                    let placed = w.insert_once(XdpDesc {
                        addr: f.addr,
                        len: f.len,
                        options: 0,
                    });
                    debug_assert!(placed, "reserved TX slot refused");
                    room -= 1;
                    queued += 1;
                } else {
                    self.pool.put(f.addr, Owner::App);
                    p.stats.tx_dropped += 1;
                }
            }
            w.commit();
        }
        for f in frames.get(next..).unwrap_or(&[]) {
            self.pool.put(f.addr, Owner::App);
            p.stats.tx_dropped += 1;
        }
        p.stats.tx += queued as u64;
        queued
    }

    fn release(&mut self, frames: &[Frame]) {
        for f in frames {
            self.pool.put(f.addr, Owner::App);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let ring = self.ring;
        let rounds = ring / self.tx_budget.max(1) + 1;
        let mut result = Ok(());
        for p in self.ports.iter_mut() {
            for _ in 0..2 {
                let mut done = p.dev.complete(ring);
                let cap = done.capacity();
                while let Some(addr) = done.read() {
                    self.pool.put(addr, Owner::Port);
                }
                done.release();
                if cap == 0 {
                    break;
                }
            }
            if let (Err(e), true) = (p.kick_tx(rounds), result.is_ok()) {
                result = Err(e);
            }
        }
        self.refill();
        for p in self.ports.iter_mut() {
            if let (Err(e), true) = (p.wake_fill(), result.is_ok()) {
                result = Err(e);
            }
        }
        result
    }

    fn stats(&self, port: usize) -> PortStats {
        self.ports.get(port).map(|p| p.stats).unwrap_or_default()
    }

    fn wait(&mut self, timeout: std::time::Duration) -> io::Result<()> {
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        let n = libc::nfds_t::try_from(self.pollfds.len()).unwrap_or(0);
        // SAFETY: the array is ours, of `n` initialised pollfd entries, for the whole call.
        let rc = unsafe { libc::poll(self.pollfds.as_mut_ptr(), n, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_can_move_to_the_worker_thread() {
        fn check<T: Send>() {}
        check::<XdpPorts>();
    }

    #[test]
    fn bad_options_say_what_is_accepted() {
        let opts = XdpOptions::default();
        let e = validate(&[], &opts).unwrap_err();
        assert!(e.to_string().contains("at least one"), "{e}");
    }
}
