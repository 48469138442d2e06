//! The XDP side of AF_XDP: an XSKMAP and a six-instruction redirect program, loaded and attached
//! with the bpf(2) system call directly.
//!
//! Why our own loader: xdpilone (the ring library) deliberately loads nothing, and the crates that
//! do (afxdp, xsk-rs) bundle libbpf/libxdp builds that attach over netlink and leave the program
//! behind after a crash. A `bpf_link` detaches by itself when its last file descriptor closes, so
//! no exit path, `kill -9` included, leaves a stale program for the next start to trip over.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::iface::interface_index;

/// Where the XDP program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Generic XDP, after the kernel built an skb: works on every interface, slower.
    Skb,
    /// Native XDP in the driver: needs driver support; the only mode that can do zero-copy.
    Drv,
}

impl XdpMode {
    fn link_flags(self) -> u32 {
        match self {
            XdpMode::Skb => XDP_FLAGS_SKB_MODE,
            XdpMode::Drv => XDP_FLAGS_DRV_MODE,
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Skb => "skb",
            XdpMode::Drv => "drv",
        })
    }
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
/// What a frame on a queue without a socket gets: dropped, never handed to the kernel.
const XDP_DROP: i32 = 1;
/// Offset of `rx_queue_index` in `struct xdp_md`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one (little-endian bitfield order).
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP)`: a queue without a socket in the
/// map drops (fails closed): nothing from a data port reaches the gateway's kernel stack, which
/// would answer or forward what vipgate is there to filter.
fn redirect_program(map_fd: i32) -> [Insn; 6] {
    [
        // r2 = *(u32 *)(r1 + 16)
        insn(0x61, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        // r1 = map (ld_imm64 takes two slots)
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        // r3 = XDP_DROP
        insn(0xb7, 3, 0, 0, XDP_DROP),
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        insn(0x95, 0, 0, 0, 0),
    ]
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// bpf(2). The kernel zero-extends a short attribute struct, so each command passes only the
/// fields it uses.
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr points to a live, initialised repr(C) struct of the given size whose pointer
    // fields (if any) point to buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn sys_bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf(2) returned a bad fd"))?;
    // SAFETY: the kernel just returned this fd to us and nobody else owns it (bpf fds are
    // close-on-exec, so spawned children do not inherit it either).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(name.bytes().take(15)) {
        *o = b;
    }
    out
}

/// An XDP program attached to one interface that redirects each RX queue to the AF_XDP socket
/// registered for it (see [`crate::XdpPorts::open`]), and drops frames of queues without a
/// socket: the data port fails closed.
///
/// Dropping it detaches the program; so does the death of the process, however it dies,
/// because the attachment is a `bpf_link` owned by a file descriptor. `Send + Sync`: it only
/// holds file descriptors.
#[derive(Debug)]
pub struct XdpProgram {
    /// Held, never read: closing it is what detaches the program.
    _link: OwnedFd,
    map: OwnedFd,
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
    queues: u32,
}

impl XdpProgram {
    /// Loads the redirect program with an XSKMAP of `queues` entries and attaches it to
    /// `ifname` in `mode`.
    ///
    /// # Errors
    /// Every error names the interface and the mode, e.g.
    /// `XDP attach on vg-pub (drv): Device or resource busy (os error 16); another XDP program
    /// is attached ...`, with the likely cause for EOPNOTSUPP, ERANGE, ENOSPC, EBUSY and EPERM;
    /// a refused program carries the kernel verifier's log.
    pub fn attach(ifname: &str, mode: XdpMode, queues: u32) -> io::Result<XdpProgram> {
        let fail = |what: &str, e: io::Error| attach_error(ifname, mode, what, &e);
        let ifindex = interface_index(ifname)?;
        if queues == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("XDP attach on {ifname} ({mode}): queues must be at least 1"),
            ));
        }

        let mut map_attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_XSKMAP,
            key_size: 4,
            value_size: 4,
            max_entries: queues,
            map_name: name16("vipgate_xsks"),
            ..MapCreateAttr::default()
        };
        let map = sys_bpf_fd(BPF_MAP_CREATE, &mut map_attr)
            .map_err(|e| fail("creating the XSKMAP", e))?;
        let prog = load_program(map.as_raw_fd()).map_err(|e| fail("loading the program", e))?;

        let mut link_attr = LinkCreateAttr {
            prog_fd: fd_u32(&prog),
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: mode.link_flags(),
        };
        let link = sys_bpf_fd(BPF_LINK_CREATE, &mut link_attr).map_err(|e| fail("", e))?;
        // The link holds its own reference to the program; `prog` may close now.
        drop(prog);

        Ok(XdpProgram {
            _link: link,
            map,
            ifname: ifname.to_owned(),
            ifindex,
            mode,
            queues,
        })
    }

    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The interface's index (in the network namespace it was attached from).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The mode the program is attached in.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// The number of queues the program can redirect (0 to `queues - 1`).
    pub fn queues(&self) -> u32 {
        self.queues
    }

    /// Points queue `queue` at the AF_XDP socket `fd` (which must be bound to that queue).
    pub(crate) fn set_socket(&self, queue: u32, fd: i32) -> io::Result<()> {
        let key = queue;
        let value = fd;
        let mut attr = MapElemAttr {
            map_fd: fd_u32(&self.map),
            key: &key as *const u32 as u64,
            value: &value as *const i32 as u64,
            ..MapElemAttr::default()
        };
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

fn fd_u32(fd: &OwnedFd) -> u32 {
    // Open fds are never negative.
    fd.as_raw_fd() as u32
}

fn load_program(map_fd: i32) -> io::Result<OwnedFd> {
    let insns = redirect_program(map_fd);
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name16("vipgate_xsk"),
        expected_attach_type: BPF_XDP,
        ..ProgLoadAttr::default()
    };
    // EAGAIN from the verifier means "try again" (libbpf retries the same way); bounded.
    let mut last = io::Error::from_raw_os_error(libc::EAGAIN);
    for _ in 0..5 {
        match sys_bpf_fd(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => last = e,
            Err(e) => {
                last = e;
                break;
            }
        }
    }
    // Load once more with the verifier log on, only to explain the failure.
    let mut log = vec![0u8; 64 * 1024];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    if let Ok(fd) = sys_bpf_fd(BPF_PROG_LOAD, &mut attr) {
        return Ok(fd);
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(log.get(..end).unwrap_or(&[]));
    let text = text.trim();
    if text.is_empty() {
        Err(last)
    } else {
        // The verifier's conclusion is at the end of its log.
        let tail: String = text
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(io::Error::new(
            last.kind(),
            format!("{last}; verifier log: {}", tail.replace('\n', " | ")),
        ))
    }
}

fn attach_error(ifname: &str, mode: XdpMode, what: &str, e: &io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EBUSY) | Some(libc::EEXIST) => format!(
            "; another XDP program is attached to {ifname} (see `ip -d link show dev {ifname}`; \
             one attached without a bpf_link is removed by `ip link set dev {ifname} xdp off`)"
        ),
        Some(libc::EOPNOTSUPP) if mode == XdpMode::Drv => {
            format!("; the driver of {ifname} has no native XDP support: use mode \"skb\"")
        }
        Some(libc::EOPNOTSUPP) => "; this kernel or interface does not support XDP".to_owned(),
        Some(libc::ERANGE) => format!(
            "; the MTU is too large for native XDP on {ifname} (on a veth the peer's MTU must \
             be at most 3506)"
        ),
        Some(libc::ENOSPC) => format!(
            "; {ifname} has too few RX queues for native XDP (a veth needs at least as many RX \
             queues as its peer has TX queues: create both ends with the same numrxqueues and \
             numtxqueues)"
        ),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "; needs root, or CAP_NET_ADMIN and CAP_BPF (plus CAP_NET_RAW and CAP_IPC_LOCK for \
             AF_XDP sockets)"
                .to_owned()
        }
        _ => String::new(),
    };
    let what = if what.is_empty() {
        String::new()
    } else {
        format!("{what}: ")
    };
    io::Error::new(
        e.kind(),
        format!("XDP attach on {ifname} ({mode}): {what}{e}{hint}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_encoding() {
        let p = redirect_program(7);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!((p[0].code, p[0].regs, p[0].off), (0x61, 0x12, 16));
        assert_eq!((p[1].code, p[1].regs, p[1].imm), (0x18, 0x11, 7));
        assert_eq!((p[3].regs, p[3].imm), (3, XDP_DROP));
        assert_eq!((p[4].code, p[4].imm), (0x85, 51));
        assert_eq!(p[5].code, 0x95);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<MapElemAttr>(), 32);
    }

    #[test]
    fn errors_name_interface_mode_and_cause() {
        let e = attach_error(
            "vg-pub",
            XdpMode::Drv,
            "",
            &io::Error::from_raw_os_error(libc::EBUSY),
        );
        let s = e.to_string();
        assert!(s.starts_with("XDP attach on vg-pub (drv): "), "{s}");
        assert!(s.contains("another XDP program is attached"), "{s}");
        let s = attach_error(
            "x",
            XdpMode::Drv,
            "",
            &io::Error::from_raw_os_error(libc::ERANGE),
        )
        .to_string();
        assert!(s.contains("3506"), "{s}");
        let s = attach_error(
            "x",
            XdpMode::Drv,
            "",
            &io::Error::from_raw_os_error(libc::ENOSPC),
        )
        .to_string();
        assert!(s.contains("numrxqueues"), "{s}");
        let s = attach_error(
            "x",
            XdpMode::Drv,
            "",
            &io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        )
        .to_string();
        assert!(s.contains("use mode \"skb\""), "{s}");
    }

    #[test]
    fn refused_program_carries_the_verifier_log() {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: refused_program_carries_the_verifier_log: needs root (bpf)");
            return;
        }
        // A map fd that is no map: the verifier refuses the ld_imm64 and says why.
        let e = load_program(-1).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("verifier log: "), "{s}");
        assert!(s.contains("fd -1"), "{s}");
    }

    #[test]
    fn program_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<XdpProgram>();
    }

    #[test]
    fn missing_interface_is_named() {
        let e = XdpProgram::attach("vg-nonexist0", XdpMode::Skb, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string().contains("no interface named vg-nonexist0"),
            "{e}"
        );
    }
}
