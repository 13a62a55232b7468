//! What a net device is attached to, and its `--net` command-line form:
//! `tap=NAME[,mac=xx:xx:xx:xx:xx:xx][,mtu=N]` (an existing TAP of this
//! network namespace) or `fd=N[,mac=...][,mtu=N]` (a TAP queue descriptor
//! the caller opened, possibly in another network namespace, and left
//! open for us).

use std::fmt;
use std::os::fd::RawFd;
use std::str::FromStr;

/// Errors in a `--net` specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    /// Neither `tap=` nor `fd=`.
    #[error("--net needs tap=NAME or fd=N (got {0:?})")]
    MissingTap(String),
    /// Both `tap=` and `fd=`.
    #[error("--net takes tap=NAME or fd=N, not both")]
    TapAndFd,
    /// A descriptor number that is not one, or one of stdin/stdout/stderr.
    #[error("--net: fd={0:?} is not a descriptor number of 3 or more (0-2 are stdio)")]
    BadFd(String),
    /// A TAP name the kernel would refuse.
    #[error("--net: tap={0:?} is not an interface name (1-15 characters, no '/', ':' or spaces)")]
    BadTapName(String),
    /// A MAC that does not parse or is multicast/zero.
    #[error("--net: mac={0:?} is not a unicast MAC address like 52:54:00:12:34:56")]
    BadMac(String),
    /// An MTU out of range.
    #[error("--net: mtu={0:?} is not a number in 68..=65535")]
    BadMtu(String),
    /// A key we do not know.
    #[error("--net: unknown option {0:?}; use tap= or fd=, mac= and mtu=")]
    UnknownKey(String),
    /// A part without `=`.
    #[error("--net: {0:?} is not key=value")]
    NotKeyValue(String),
    /// The same key twice.
    #[error("--net: {0}= given twice")]
    Duplicate(&'static str),
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetConfigError::BadMac(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() || mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl MacAddr {
    /// A locally administered address derived from `seed` (52:54:00 prefix
    /// is QEMU's; ours is 02:c0:c0 + 3 bytes).
    pub fn local(seed: u32) -> Self {
        let s = seed.to_be_bytes();
        MacAddr([0x02, 0xc0, 0xc0, s[1], s[2], s[3]])
    }
}

/// Where a net device's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// An existing TAP interface of this network namespace (`ip tuntap
    /// add NAME mode tap`), attached to by name.
    Name(String),
    /// An open TAP queue descriptor inherited from the caller (who made
    /// the TAP, e.g. in a pod's network namespace); this process owns it.
    Fd(RawFd),
}

/// One virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The TAP.
    pub tap: TapSource,
    /// The guest's MAC; without it the device offers no `VIRTIO_NET_F_MAC`
    /// and the guest picks a random one.
    pub mac: Option<MacAddr>,
    /// The link's MTU, offered as `VIRTIO_NET_F_MTU`: the guest driver
    /// takes it as its MTU and maximum, and above 1500 posts receive
    /// buffers large enough for such frames (without it, it posts 1518-byte
    /// ones, and larger frames from the TAP are dropped).
    pub mtu: Option<u16>,
}

/// The smallest MTU the option takes (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

fn valid_ifname(name: &str) -> bool {
    (1..16).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':' && b != b',')
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (mut tap, mut fd, mut mac, mut mtu) = (None, None, None, None);
        for part in spec.split(',') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(NetConfigError::NotKeyValue(part.to_string()));
            };
            match key {
                "tap" | "ifname" => {
                    if !valid_ifname(value) {
                        return Err(NetConfigError::BadTapName(value.to_string()));
                    }
                    if tap.replace(value.to_string()).is_some() {
                        return Err(NetConfigError::Duplicate("tap"));
                    }
                }
                "fd" => {
                    let n = value
                        .parse::<RawFd>()
                        .ok()
                        .filter(|n| *n >= 3 && value.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| NetConfigError::BadFd(value.to_string()))?;
                    if fd.replace(n).is_some() {
                        return Err(NetConfigError::Duplicate("fd"));
                    }
                }
                "mtu" => {
                    let n = value
                        .parse::<u16>()
                        .ok()
                        .filter(|n| *n >= MIN_MTU && value.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| NetConfigError::BadMtu(value.to_string()))?;
                    if mtu.replace(n).is_some() {
                        return Err(NetConfigError::Duplicate("mtu"));
                    }
                }
                "mac" => {
                    if mac.replace(value.parse::<MacAddr>()?).is_some() {
                        return Err(NetConfigError::Duplicate("mac"));
                    }
                }
                _ => return Err(NetConfigError::UnknownKey(key.to_string())),
            }
        }
        let tap = match (tap, fd) {
            (Some(name), None) => TapSource::Name(name),
            (None, Some(fd)) => TapSource::Fd(fd),
            (Some(_), Some(_)) => return Err(NetConfigError::TapAndFd),
            (None, None) => return Err(NetConfigError::MissingTap(spec.to_string())),
        };
        Ok(NetConfig { tap, mac, mtu })
    }
}

/// The `--net` argument that gives this configuration back.
impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tap {
            TapSource::Name(name) => write!(f, "tap={name}")?,
            TapSource::Fd(fd) => write!(f, "fd={fd}")?,
        }
        if let Some(mac) = self.mac {
            write!(f, ",mac={mac}")?;
        }
        if let Some(mtu) = self.mtu {
            write!(f, ",mtu={mtu}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_back() {
        let c: NetConfig = "tap=tap0,mac=52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(c.tap, TapSource::Name("tap0".into()));
        assert_eq!(c.mac, Some(MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1])));
        assert_eq!(c.to_string(), "tap=tap0,mac=52:54:00:ab:cd:01");
        assert_eq!(c.to_string().parse::<NetConfig>().unwrap(), c);
        assert_eq!("tap=t".parse::<NetConfig>().unwrap().mac, None);
        assert_eq!(MacAddr::local(0x0012_3456).to_string(), "02:c0:c0:12:34:56");
        let c: NetConfig = "fd=3,mac=02:42:0a:63:00:02,mtu=9000".parse().unwrap();
        assert_eq!((c.tap.clone(), c.mtu), (TapSource::Fd(3), Some(9000)));
        assert_eq!(c.to_string(), "fd=3,mac=02:42:0a:63:00:02,mtu=9000");
        assert_eq!(c.to_string().parse::<NetConfig>().unwrap(), c);
        assert_eq!(
            "mac=02:42:0a:63:00:02,fd=17"
                .parse::<NetConfig>()
                .unwrap()
                .tap,
            TapSource::Fd(17)
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |s: &str| s.parse::<NetConfig>().unwrap_err();
        assert!(matches!(
            err("mac=52:54:00:00:00:01"),
            NetConfigError::MissingTap(_)
        ));
        for mac in [
            "52:54:00:00:00",
            "52:54:00:00:00:01:02",
            "5254.0000.0001",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "52:54:00:0g:00:01",
            "052:54:00:00:00:1",
        ] {
            assert!(
                matches!(err(&format!("tap=t,mac={mac}")), NetConfigError::BadMac(_)),
                "{mac}"
            );
        }
        assert!(matches!(
            err("tap=a-very-long-name-0"),
            NetConfigError::BadTapName(_)
        ));
        assert!(matches!(err("tap="), NetConfigError::BadTapName(_)));
        assert!(matches!(err("tap=a/b"), NetConfigError::BadTapName(_)));
        assert!(matches!(
            err("tap=a,queues=2"),
            NetConfigError::UnknownKey(_)
        ));
        assert!(matches!(
            err("tap=a,tap=b"),
            NetConfigError::Duplicate("tap")
        ));
        for fd in ["0", "2", "-1", "x", "", "+4", "99999999999"] {
            assert!(
                matches!(err(&format!("fd={fd}")), NetConfigError::BadFd(_)),
                "fd={fd}"
            );
        }
        assert!(matches!(err("tap=t,fd=3"), NetConfigError::TapAndFd));
        for mtu in ["67", "65536", "0", "+1500", "", "1500b"] {
            assert!(
                matches!(err(&format!("tap=t,mtu={mtu}")), NetConfigError::BadMtu(_)),
                "mtu={mtu}"
            );
        }
        assert!(matches!(
            err("tap=t,mtu=1500,mtu=1400"),
            NetConfigError::Duplicate("mtu")
        ));
        assert!(matches!(err("fd=3,fd=4"), NetConfigError::Duplicate("fd")));
        assert!(err("fd=1").to_string().contains("0-2 are stdio"));
        assert!(err("tap=t,mac=zz")
            .to_string()
            .contains("52:54:00:12:34:56"));
    }
}
