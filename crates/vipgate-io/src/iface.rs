//! Interface lookups by name.

use std::ffi::CString;
use std::io;

fn bad_name(name: &str) -> Option<io::Error> {
    let ok = !name.is_empty() && name.len() < libc::IFNAMSIZ && !name.contains(['\0', '/']);
    (!ok).then(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name; expected 1 to 15 bytes, no NUL or '/'"),
        )
    })
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no interface named {name} (in this network namespace)"),
    )
}

/// The index of interface `name` in the calling thread's network namespace.
///
/// # Errors
/// `NotFound` "no interface named X" when it does not exist; `InvalidInput` for a name that
/// cannot be an interface name.
pub fn interface_index(name: &str) -> io::Result<u32> {
    if let Some(e) = bad_name(name) {
        return Err(e);
    }
    let c = CString::new(name).map_err(|_| not_found(name))?;
    // SAFETY: c is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => not_found(name),
            _ => io::Error::new(e.kind(), format!("looking up interface {name}: {e}")),
        });
    }
    Ok(index)
}

/// The hardware (MAC) address of interface `name` (SIOCGIFHWADDR).
///
/// # Errors
/// `NotFound` "no interface named X" when it does not exist; the OS error, naming the
/// interface, otherwise.
pub fn interface_mac(name: &str) -> io::Result<[u8; 6]> {
    if let Some(e) = bad_name(name) {
        return Err(e);
    }
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("reading the MAC address of {name}: socket: {e}"),
        ));
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr inside req.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFHWADDR,
            &mut req as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENODEV) => not_found(name),
            _ => io::Error::new(e.kind(), format!("reading the MAC address of {name}: {e}")),
        });
    }
    // SAFETY: the kernel filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

/// How many receive queues interface `name` has (ETHTOOL_GCHANNELS: combined plus rx-only
/// channels); `None` when the driver does not say.
///
/// # Errors
/// `NotFound` when the interface does not exist.
pub fn rx_queue_count(name: &str) -> io::Result<Option<u32>> {
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    /// `struct ethtool_channels`.
    #[repr(C)]
    #[derive(Default)]
    struct Channels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    if let Some(e) = bad_name(name) {
        return Err(e);
    }
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut ch = Channels {
        cmd: ETHTOOL_GCHANNELS,
        ..Channels::default()
    };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = std::ptr::from_mut(&mut ch).cast();
    // SAFETY: SIOCETHTOOL reads ifr_name and the command in ch, and writes ch, which lives
    // for the call.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCETHTOOL,
            &mut req as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODEV) => Err(not_found(name)),
            _ => Ok(None),
        };
    }
    Ok(Some(ch.combined_count + ch.rx_count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_a_queue_count_or_none() {
        // Loopback has no channels to report; the call must still succeed.
        assert!(rx_queue_count("lo").is_ok());
        assert_eq!(
            rx_queue_count("no-such-if-x").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn loopback_is_found() {
        assert!(interface_index("lo").unwrap() >= 1);
        assert_eq!(interface_mac("lo").unwrap(), [0; 6]);
    }

    #[test]
    fn missing_interfaces_are_named() {
        for e in [
            interface_index("vg-nonexist0").unwrap_err(),
            interface_mac("vg-nonexist0").unwrap_err(),
        ] {
            assert_eq!(e.kind(), io::ErrorKind::NotFound);
            assert!(
                e.to_string().starts_with("no interface named vg-nonexist0"),
                "{e}"
            );
        }
        assert_eq!(
            interface_index("").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            interface_mac("a-name-far-too-long").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}

/// Ethernet addresses interface `name` accepts besides its own, for as long as this value
/// lives: the kernel adds them to the NIC's filter (`PACKET_ADD_MEMBERSHIP`) and removes
/// them when the socket holding them closes, even if the process dies. A NIC that filters
/// by address would otherwise drop VRRP's multicast adverts and frames to the VRRP virtual
/// MAC before XDP sees them.
#[derive(Debug)]
pub struct LinkAddresses {
    _fd: std::os::fd::OwnedFd,
}

impl LinkAddresses {
    /// Accepts `addrs` on interface `name`: each multicast (group bit set) or unicast.
    ///
    /// # Errors
    /// No such interface, or the kernel refused (needs CAP_NET_RAW).
    pub fn add(name: &str, addrs: &[[u8; 6]]) -> io::Result<LinkAddresses> {
        let index = interface_index(name)?;
        // SAFETY: plain socket(2); the fd is owned below. Protocol 0: it receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket that nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        for mac in addrs {
            // SAFETY: packet_mreq is plain old data; all zeroes is a valid value.
            let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
            mr.mr_ifindex = i32::try_from(index).unwrap_or(0);
            mr.mr_type = if mac[0] & 1 != 0 {
                libc::PACKET_MR_MULTICAST as u16
            } else {
                libc::PACKET_MR_UNICAST as u16
            };
            mr.mr_alen = 6;
            for (d, s) in mr.mr_address.iter_mut().zip(mac) {
                *d = *s;
            }
            // SAFETY: mr is a live packet_mreq of the length given.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    libc::SOL_PACKET,
                    libc::PACKET_ADD_MEMBERSHIP,
                    std::ptr::from_ref(&mr).cast(),
                    libc::socklen_t::try_from(std::mem::size_of::<libc::packet_mreq>())
                        .unwrap_or(0),
                )
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("{name}: accepting {mac:02x?}: {e}"),
                ));
            }
        }
        Ok(LinkAddresses { _fd: fd })
    }
}

/// Sends whole Ethernet frames out of one interface through the kernel (`AF_PACKET`), from
/// whichever thread owns it: for control frames that must leave on time even while the
/// workers are busy or starved (VRRP adverts). The XDP program only sees what arrives, so
/// frames sent this way are not affected by it. The socket receives nothing.
#[derive(Debug)]
pub struct FrameSender {
    fd: std::os::fd::OwnedFd,
    name: String,
}

impl FrameSender {
    /// A sender on interface `name`.
    ///
    /// # Errors
    /// No such interface, or the kernel refused (needs CAP_NET_RAW).
    pub fn new(name: &str) -> io::Result<FrameSender> {
        let index = interface_index(name)?;
        // SAFETY: plain socket(2); the fd is owned below. Protocol 0: it receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket that nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = i32::try_from(index).unwrap_or(0);
        // SAFETY: sa is a live sockaddr_ll of the length given.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                std::ptr::from_ref(&sa).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{name}: binding: {e}")));
        }
        Ok(FrameSender {
            fd,
            name: name.to_string(),
        })
    }

    /// Sends `frame` (Ethernet header included) as it is; one system call.
    ///
    /// # Errors
    /// The kernel's, e.g. the interface is down.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a live buffer of the length given.
        let rc = unsafe {
            libc::send(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{}: {e}", self.name)));
        }
        Ok(())
    }
}
