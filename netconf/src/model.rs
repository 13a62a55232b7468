//! What a pod's interface is: its MAC, MTU, addresses and routes, with
//! their text forms (the agent protocol carries them as text) and the
//! checks that bound what the agent accepts.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Most addresses one interface may carry.
pub const MAX_ADDRESSES: usize = 32;
/// Most routes one interface may carry.
pub const MAX_ROUTES: usize = 64;
/// The smallest MTU IPv4 allows.
pub const MIN_MTU: u32 = 68;
/// The smallest MTU IPv6 allows (the kernel turns IPv6 off below it).
pub const MIN_MTU_IPV6: u32 = 1280;
/// The largest MTU (virtio-net moves frames of up to 64 KiB).
pub const MAX_MTU: u32 = 65535;

/// A configuration that cannot be applied, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0:?} is not a unicast MAC address like 02:42:0a:00:00:05")]
    BadMac(String),
    #[error("{0:?} is not an address with a prefix length, like 10.0.0.5/24 or fd00::5/64")]
    BadCidr(String),
    #[error("{0:?} is not an IP address")]
    BadIp(String),
    #[error("MTU {mtu} is outside {min}..={max}")]
    Mtu { mtu: u32, min: u32, max: u32 },
    #[error("{what}: {count} given, at most {max} are supported")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("address {0}: {1}")]
    Address(Cidr, &'static str),
    #[error("route to {0}: {1}")]
    Route(Cidr, &'static str),
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Not multicast (nor broadcast), not all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for Mac {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadMac(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        let mac = Mac(mac);
        if parts.next().is_some() || !mac.is_unicast() {
            return Err(bad());
        }
        Ok(mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// An address with a prefix length (`10.0.0.5/24`); for a route's
/// destination, the network (`10.0.0.0/24`, `0.0.0.0/0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Checked: the prefix fits the family.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, ConfigError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(ConfigError::BadCidr(format!("{addr}/{prefix}")));
        }
        Ok(Cidr { addr, prefix })
    }

    /// Whether the bits past the prefix are zero (a network, not a host).
    pub fn is_network(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
                u32::from(a) & host == 0
            }
            IpAddr::V6(a) => {
                let host = u128::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
                u128::from(a) & host == 0
            }
        }
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadCidr(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Cidr::new(addr, prefix).map_err(|_| bad())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One route through the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The network it leads to (`0.0.0.0/0` or `::/0`: the default route).
    pub destination: Cidr,
    /// The next hop; `None`: the destination is on the link.
    pub gateway: Option<IpAddr>,
    /// The gateway is on the link even outside every address's network
    /// (`ip route ... onlink`).
    pub onlink: bool,
    /// The route's priority (`metric`); 0 is the kernel's default.
    pub metric: u32,
}

/// Everything the guest needs to answer as the pod: the interface the host
/// found in the pod's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub mac: Mac,
    /// The MAC the guest's NIC has now, when it is not `mac` (a VM
    /// restored from a template keeps the template's): the interface with
    /// this MAC is given `mac`.
    pub device_mac: Option<Mac>,
    pub mtu: u32,
    pub addresses: Vec<Cidr>,
    pub routes: Vec<Route>,
}

/// An address a host interface must never be given here.
fn unusable(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if matches!(ip, IpAddr::V4(a) if a.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
    }
}

impl InterfaceConfig {
    /// Checks what the kernel would refuse, or should never be asked, with
    /// an error naming the field: a unicast MAC, an MTU in range, bounded
    /// counts, usable addresses, routes to networks (not hosts) with a
    /// gateway of the destination's family, no route given twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.mac.is_unicast() {
            return Err(ConfigError::BadMac(self.mac.to_string()));
        }
        if let Some(m) = self.device_mac.filter(|m| !m.is_unicast()) {
            return Err(ConfigError::BadMac(m.to_string()));
        }
        let has_v6 = self.addresses.iter().any(|a| a.addr.is_ipv6());
        let min = if has_v6 { MIN_MTU_IPV6 } else { MIN_MTU };
        if !(min..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::Mtu {
                mtu: self.mtu,
                min,
                max: MAX_MTU,
            });
        }
        let count = |what, count, max| {
            if count > max {
                Err(ConfigError::TooMany { what, count, max })
            } else {
                Ok(())
            }
        };
        count("addresses", self.addresses.len(), MAX_ADDRESSES)?;
        count("routes", self.routes.len(), MAX_ROUTES)?;
        for (i, a) in self.addresses.iter().enumerate() {
            Cidr::new(a.addr, a.prefix)?;
            if let Some(why) = unusable(a.addr) {
                return Err(ConfigError::Address(*a, why));
            }
            if self.addresses[..i].iter().any(|b| b.addr == a.addr) {
                return Err(ConfigError::Address(*a, "given twice"));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let dst = r.destination;
            let err = |why| Err(ConfigError::Route(dst, why));
            Cidr::new(dst.addr, dst.prefix)?;
            if !dst.is_network() {
                return err("the destination has bits set past its prefix length");
            }
            if dst.addr.is_multicast() || dst.addr.is_loopback() {
                return err("not a unicast destination");
            }
            if let Some(gw) = r.gateway {
                if gw.is_ipv4() != dst.addr.is_ipv4() {
                    return err("the gateway is of the other address family");
                }
                if unusable(gw).is_some() {
                    return err("the gateway is not a unicast address");
                }
            } else if r.onlink {
                return err("onlink without a gateway");
            }
            if self.routes[..i]
                .iter()
                .any(|o| o.destination == dst && o.metric == r.metric)
            {
                return err("given twice with the same metric");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn good() -> InterfaceConfig {
        InterfaceConfig {
            mac: "02:42:0a:63:00:02".parse().unwrap(),
            device_mac: None,
            mtu: 1500,
            addresses: vec![cidr("10.99.0.2/24"), cidr("fd00:99::2/64")],
            routes: vec![
                Route {
                    destination: cidr("0.0.0.0/0"),
                    gateway: Some("10.99.0.1".parse().unwrap()),
                    onlink: false,
                    metric: 0,
                },
                Route {
                    destination: cidr("169.254.1.1/32"),
                    gateway: None,
                    onlink: false,
                    metric: 0,
                },
                Route {
                    destination: cidr("::/0"),
                    gateway: Some("fe80::1".parse().unwrap()),
                    onlink: false,
                    metric: 1024,
                },
            ],
        }
    }

    #[test]
    fn text_forms_round_trip() {
        let m: Mac = "02:42:0A:63:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:0a:63:00:02");
        for bad in [
            "02:42:0a:63:00",
            "02:42:0a:63:00:02:03",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
            "2:42:0a:63:00:02",
            "02-42-0a-63-00-02",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        for ok in ["10.0.0.1/32", "0.0.0.0/0", "fd00::1/128", "::/0"] {
            assert_eq!(cidr(ok).to_string(), ok);
        }
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "fd00::1/129",
            "10.0.0.1/",
            "10.0.0.1/+8",
            "10.0.0/8",
            "/8",
            "10.0.0.1/0008",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_and_membership() {
        assert!(cidr("10.99.0.0/24").is_network());
        assert!(!cidr("10.99.0.1/24").is_network());
        assert!(cidr("0.0.0.0/0").is_network());
        assert!(cidr("10.99.0.1/32").is_network());
        assert!(cidr("fd00::/64").is_network());
        assert!(!cidr("fd00::1/64").is_network());
        assert!(cidr("10.99.0.0/24").contains("10.99.0.200".parse().unwrap()));
        assert!(!cidr("10.99.0.0/24").contains("10.99.1.1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(!cidr("0.0.0.0/0").contains("::1".parse().unwrap()));
    }

    #[test]
    fn validation_names_the_problem() {
        good().validate().unwrap();
        let check = |f: &dyn Fn(&mut InterfaceConfig), want: &str| {
            let mut c = good();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want:?}");
        };
        check(&|c| c.mtu = 67, "MTU 67 is outside 1280..=65535");
        check(&|c| c.mtu = 1000, "outside 1280");
        check(&|c| c.mtu = 70_000, "MTU 70000");
        check(&|c| c.mac = Mac([1, 0, 0, 0, 0, 1]), "not a unicast MAC");
        check(
            &|c| c.addresses = vec![cidr("10.0.0.1/8"); MAX_ADDRESSES + 1],
            "addresses: 33 given, at most 32",
        );
        check(
            &|c| c.routes = vec![c.routes[0].clone(); MAX_ROUTES + 1],
            "routes: 65 given",
        );
        check(&|c| c.addresses.push(cidr("10.99.0.2/16")), "given twice");
        check(&|c| c.addresses.push(cidr("127.0.0.2/8")), "loopback");
        check(&|c| c.addresses.push(cidr("224.0.0.1/4")), "multicast");
        check(&|c| c.addresses.push(cidr("0.0.0.0/8")), "unspecified");
        check(
            &|c| c.routes[1].destination = cidr("10.99.0.1/24"),
            "bits set past its prefix",
        );
        check(
            &|c| c.routes[0].gateway = Some("fe80::1".parse().unwrap()),
            "other address family",
        );
        check(
            &|c| c.routes[0].gateway = Some("255.255.255.255".parse().unwrap()),
            "not a unicast address",
        );
        check(&|c| c.routes[1].onlink = true, "onlink without a gateway");
        check(
            &|c| c.routes.push(c.routes[0].clone()),
            "given twice with the same metric",
        );
        // The same destination with another metric is a second route.
        let mut c = good();
        let mut r = c.routes[0].clone();
        r.metric = 100;
        c.routes.push(r);
        c.validate().unwrap();
        // Without IPv6 addresses, IPv4's minimum applies.
        let mut c = good();
        c.addresses.retain(|a| a.addr.is_ipv4());
        c.mtu = 576;
        c.validate().unwrap();
    }
}
