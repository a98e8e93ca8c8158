//! The capture socket: an AF_PACKET socket made here (pnet cannot size its receive buffer or
//! read its drop count), handed to pnet for reading.
//!
//! The gateway's only unsafe code but for `allocator`'s mallopt is here:
//! `getsockopt(PACKET_STATISTICS)`, `setsockopt(SO_ATTACH_FILTER)` and
//! `ioctl(SIOCGSTAMP)`, which neither rustix nor pnet offers.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::time::{Duration, SystemTime};

use pnet_datalink::{Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};
use rustix::net::{AddressFamily, SocketType, sockopt};

use crate::net::Mac;

/// How much of each frame the kernel hands over: the headers the meter reads (Ethernet, a
/// VLAN tag, an IPv4 header with options or an IPv6 header, the ports), not the payload. A
/// 64 KiB GSO/GRO super-packet is then neither copied to us nor kept whole in the socket
/// buffer while the thread is behind, which is what made the capture drop under load.
const SNAPLEN: u32 = 128;
/// pnet's read buffer: a little more than the snap length.
const READ_BUFFER: usize = 256;
/// `SO_ATTACH_FILTER` from asm-generic/socket.h (x86, ARM and arm64); the libc crate does
/// not export it for glibc targets.
const SO_ATTACH_FILTER: libc::c_int = 26;
/// The classic BPF instruction `ret #k`: accept the packet, at most `k` bytes of it.
const BPF_RET_K: u16 = 0x06;
/// `SIOCGSTAMP` from asm-generic/sockios.h (`SIOCGSTAMP_OLD`: a `timeval` of the C
/// library's `time_t`); the libc crate does not export it for glibc targets.
const SIOCGSTAMP: libc::c_ulong = 0x8906;

/// The kernel's own count of what reached the socket, since the last reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Frames the socket received (including those dropped).
    pub packets: u64,
    /// Frames the kernel dropped because the socket's buffer was full: the meter missed them.
    pub drops: u64,
}

pub struct CaptureSocket {
    rx: Box<dyn DataLinkReceiver>,
    // Kept so the descriptor stays open: pnet closes it when both halves are dropped.
    _tx: Box<dyn DataLinkSender>,
    fd: RawFd,
    /// The receive buffer the kernel granted (it doubles what is asked, for its overhead).
    pub buffer_bytes: usize,
    /// The interface's MAC.
    pub mac: Mac,
}

impl std::fmt::Debug for CaptureSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureSocket")
            .field("fd", &self.fd)
            .field("buffer_bytes", &self.buffer_bytes)
            .finish()
    }
}

fn interface(name: &str) -> io::Result<NetworkInterface> {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface {name:?} to capture on"),
            )
        })
}

impl CaptureSocket {
    /// Opens a capture of every frame in and out of `interface`, with a receive buffer of
    /// `buffer_bytes` (forced past `net.core.rmem_max`, which needs CAP_NET_ADMIN; without it
    /// the buffer is capped there and a warning says so). Reads give up after
    /// `read_timeout`, so the reading thread can hand over its tallies on time when idle.
    pub fn open(
        interface_name: &str,
        buffer_bytes: usize,
        read_timeout: Duration,
    ) -> io::Result<Self> {
        let iface = interface(interface_name)?;
        let mac = iface.mac.map(|m| Mac(m.octets())).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface {interface_name:?} has no MAC address (not Ethernet?)"),
            )
        })?;
        // Protocol 0: the socket receives nothing until pnet binds it to the interface with
        // ETH_P_ALL, so no frame of another interface slips in first.
        let socket = rustix::net::socket(AddressFamily::PACKET, SocketType::RAW, None)?;
        if let Err(err) = sockopt::set_socket_recv_buffer_size_force(&socket, buffer_bytes) {
            tracing::warn!(
                interface = interface_name,
                error = %err,
                "cannot force the capture buffer size (needs CAP_NET_ADMIN); using net.core.rmem_max at most, so the meter may drop packets under load"
            );
            sockopt::set_socket_recv_buffer_size(&socket, buffer_bytes)?;
        }
        let granted = sockopt::socket_recv_buffer_size(&socket)?;
        let fd = socket.into_raw_fd();
        if let Err(err) = attach_snaplen_filter(fd, SNAPLEN) {
            // SAFETY: `fd` was just made here and is not used after this.
            drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
            return Err(err);
        }
        let config = pnet_datalink::Config {
            read_buffer_size: READ_BUFFER,
            write_buffer_size: 0,
            read_timeout: Some(read_timeout),
            // Frames for other hosts are never forwarded by us, so never billable.
            promiscuous: false,
            socket_fd: Some(fd),
            ..pnet_datalink::Config::default()
        };
        // The first SIOCGSTAMP turns the socket's timestamps on and finds none yet; frames
        // from now on carry the time they arrived.
        let _ = arrival_stamp(fd);
        // On failure pnet has closed the descriptor.
        match pnet_datalink::channel(&iface, config)? {
            Channel::Ethernet(tx, rx) => Ok(CaptureSocket {
                rx,
                _tx: tx,
                fd,
                buffer_bytes: granted,
                mac,
            }),
            _ => Err(io::Error::other(
                "pnet returned a channel that is not Ethernet",
            )),
        }
    }

    /// The next frame, or an error of kind `TimedOut` after the read timeout; with
    /// `stamped`, also the wall-clock time the kernel received it (one more system call;
    /// `None` if the kernel has no time for it).
    pub fn next(&mut self, stamped: bool) -> io::Result<(&[u8], Option<SystemTime>)> {
        let fd = self.fd;
        let frame = self.rx.next()?;
        let stamp = if stamped {
            arrival_stamp(fd).ok()
        } else {
            None
        };
        Ok((frame, stamp))
    }

    /// What the kernel counted since the last call (reading resets its counters). Drops
    /// count frames the buffer had no room for; the filter's cut does not count.
    pub fn statistics(&self) -> io::Result<KernelStats> {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `self.fd` is open for as long as `self` lives (pnet's halves, held here,
        // own it); `stats` and `len` are valid for writes of the size `len` states.
        let result = unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast::<libc::c_void>(),
                &mut len,
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelStats {
            packets: u64::from(stats.tp_packets),
            drops: u64::from(stats.tp_drops),
        })
    }
}

/// When the kernel received the frame last read from the socket `fd` (the kernel stamps
/// frames on arrival, before the firewall sees them).
fn arrival_stamp(fd: RawFd) -> io::Result<SystemTime> {
    let mut stamp = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: `fd` is an open socket; `stamp` is valid for the write of one `timeval`,
    // which is what SIOCGSTAMP writes.
    let result = unsafe { libc::ioctl(fd, SIOCGSTAMP as _, &raw mut stamp) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    let seconds = u64::try_from(stamp.tv_sec).map_err(io::Error::other)?;
    let micros = u64::try_from(stamp.tv_usec).map_err(io::Error::other)?;
    if seconds == 0 {
        // Received before timestamps were on.
        return Err(io::Error::other("the frame has no arrival time"));
    }
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros))
}

/// Attaches the one-instruction filter `ret #snaplen` to the socket `fd`.
fn attach_snaplen_filter(fd: RawFd, snaplen: u32) -> io::Result<()> {
    let mut program = [libc::sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: snaplen,
    }];
    let fprog = libc::sock_fprog {
        len: 1,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fd` is an open socket; `fprog` and the program it points to outlive the call,
    // and the kernel copies the program before it returns.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            (&raw const fprog).cast::<libc::c_void>(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
