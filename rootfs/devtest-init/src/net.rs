//! virtio-net: bring `cocoon.net.if` (default eth0) up with
//! `cocoon.net.ip=A.B.C.D/N` through ioctls, check its MAC against
//! `cocoon.net.mac`, then send a UDP datagram to
//! `cocoon.net.peer`:`cocoon.net.port` (default 7777) and expect the host's
//! echo of it back.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use crate::params::Params;

#[repr(C)]
struct IfReqAddr {
    name: [u8; libc::IFNAMSIZ],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifname(name: &str) -> Result<[u8; libc::IFNAMSIZ], String> {
    let mut n = [0u8; libc::IFNAMSIZ];
    if name.is_empty() || name.len() >= n.len() {
        return Err(format!("bad interface name '{name}'"));
    }
    n[..name.len()].copy_from_slice(name.as_bytes());
    Ok(n)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn ioctl<T>(fd: i32, req: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: `arg` is an ifreq-shaped struct that outlives the call, as
    // each of the SIOC* requests used here expects.
    let rc = unsafe { libc::ioctl(fd, req, arg as *mut T) };
    if rc < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn configure(fd: i32, name: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), String> {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let mut a = IfReqAddr {
        name: ifname(name)?,
        addr: sockaddr(ip),
        _pad: [0; 8],
    };
    ioctl(fd, libc::SIOCSIFADDR, &mut a, "SIOCSIFADDR")?;
    a.addr = sockaddr(Ipv4Addr::from(mask));
    ioctl(fd, libc::SIOCSIFNETMASK, &mut a, "SIOCSIFNETMASK")?;
    let mut f = IfReqFlags {
        name: ifname(name)?,
        flags: 0,
        _pad: [0; 22],
    };
    ioctl(fd, libc::SIOCGIFFLAGS, &mut f, "SIOCGIFFLAGS")?;
    f.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(fd, libc::SIOCSIFFLAGS, &mut f, "SIOCSIFFLAGS")
}

fn parse_cidr(v: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, prefix) = v.split_once('/').unwrap_or((v, "24"));
    let ip = ip
        .parse()
        .map_err(|_| format!("cocoon.net.ip={v} is not A.B.C.D/N"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("cocoon.net.ip={v}: bad prefix"))?;
    Ok((ip, prefix))
}

pub fn check(p: &Params) -> Result<String, String> {
    let name = p.get("net", "if").unwrap_or("eth0");
    let (ip, prefix) = parse_cidr(p.require("net", "ip")?)?;
    let peer: Ipv4Addr = p
        .require("net", "peer")?
        .parse()
        .map_err(|_| "cocoon.net.peer is not an IPv4 address".to_string())?;
    let port: u16 = p
        .get("net", "port")
        .unwrap_or("7777")
        .parse()
        .map_err(|_| "cocoon.net.port is not a port".to_string())?;
    let mac = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
        .map_err(|e| format!("no interface {name}: {e}"))?
        .trim()
        .to_string();
    if let Some(want) = p.get("net", "mac") {
        if !mac.eq_ignore_ascii_case(want) {
            return Err(format!("{name} has MAC {mac}, expected {want}"));
        }
    }
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("udp socket: {e}"))?;
    configure(sock.as_raw_fd(), name, ip, prefix)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
    let to = SocketAddrV4::new(peer, port);
    let start = Instant::now();
    let mut last = String::from("no reply");
    for attempt in 1..=10 {
        let msg = format!("cocoon-net-ping {attempt} from {mac}");
        if let Err(e) = sock.send_to(msg.as_bytes(), to) {
            last = format!("send to {to}: {e}");
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let mut buf = [0u8; 256];
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == msg.as_bytes() => {
                return Ok(format!(
                    "{name} {mac} {ip}/{prefix}: udp echo from {from} after {attempt} attempt(s), {:?}",
                    start.elapsed()
                ));
            }
            Ok((n, from)) => last = format!("unexpected {n}-byte reply from {from}"),
            Err(e) => last = format!("no reply from {to}: {e}"),
        }
    }
    Err(last)
}
