//! Host side: the pod's interface as CNI left it in the pod's network
//! namespace (call it on a thread inside that namespace, see
//! [`crate::netns::in_netns`]).
//!
//! What is read: the one interface that is not loopback (nor one in
//! `ignore`), its MAC and MTU, its global addresses (link-local ones are
//! the guest kernel's to make, from the same MAC), and the routes of the
//! main table through it that the kernel did not add by itself for an
//! address (`proto kernel`).

use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::link::{links, Link};
use crate::model::{Cidr, ConfigError, InterfaceConfig, Route};
use crate::netlink::{Netlink, NetlinkError};

/// Interface kinds whose frames can be redirected to a TAP as they are:
/// Ethernet devices (`None`: a physical one, such as an SR-IOV function).
pub const SUPPORTED_KINDS: &[&str] = &["veth", "macvlan", "ipvlan"];

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("the pod's network namespace has no interface but loopback (interfaces: {0}); was CNI run for it?")]
    NoInterface(String),
    #[error("the pod's network namespace has {count} interfaces besides loopback ({names}); cocoon supports exactly one")]
    TooMany { count: usize, names: String },
    #[error("interface {name} is {what}; cocoon supports Ethernet devices of kind {} or physical ones", SUPPORTED_KINDS.join(", "))]
    Unsupported { name: String, what: String },
    #[error("interface {0} has no MAC address")]
    NoMac(String),
    #[error("interface {name}: the route to {destination} has several next hops; multipath routes are not supported")]
    Multipath { name: String, destination: String },
    #[error("interface {name}: {source}")]
    Config {
        name: String,
        #[source]
        source: ConfigError,
    },
}

/// The pod's interface: which one it is, and its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub link: Link,
    pub config: InterfaceConfig,
}

/// The single non-loopback interface (skipping those named in `ignore`),
/// checked to be of a supported kind.
pub fn pod_link(nl: &mut Netlink, ignore: &[&str]) -> Result<Link, ReadError> {
    let all = links(nl)?;
    let names = |ls: &[&Link]| {
        ls.iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let candidates: Vec<&Link> = all
        .iter()
        .filter(|l| !l.loopback && !ignore.contains(&l.name.as_str()))
        .collect();
    let link = match candidates.as_slice() {
        [] => {
            return Err(ReadError::NoInterface(names(
                &all.iter().collect::<Vec<_>>(),
            )))
        }
        [one] => *one,
        many => {
            return Err(ReadError::TooMany {
                count: many.len(),
                names: names(many),
            })
        }
    };
    let kind_ok = match link.kind.as_deref() {
        None => true,
        Some(k) => SUPPORTED_KINDS.contains(&k),
    };
    if !link.ether || !kind_ok {
        let what = match (&link.kind, link.ether) {
            (Some(k), true) => format!("of kind {k}"),
            (Some(k), false) => format!("of kind {k}, not an Ethernet device"),
            (None, _) => "not an Ethernet device".to_string(),
        };
        return Err(ReadError::Unsupported {
            name: link.name.clone(),
            what,
        });
    }
    if link.mac.is_none() {
        return Err(ReadError::NoMac(link.name.clone()));
    }
    Ok(link.clone())
}

/// Reads the pod's interface (see the module header) and checks the result
/// as the agent will.
pub fn read_pod_interface(nl: &mut Netlink, ignore: &[&str]) -> Result<PodInterface, ReadError> {
    let link = pod_link(nl, ignore)?;
    let config = InterfaceConfig {
        mac: link
            .mac
            .ok_or_else(|| ReadError::NoMac(link.name.clone()))?,
        device_mac: None,
        mtu: link.mtu,
        addresses: addresses(nl, link.index)?,
        routes: routes(nl, &link)?,
    };
    config.validate().map_err(|source| ReadError::Config {
        name: link.name.clone(),
        source,
    })?;
    Ok(PodInterface { link, config })
}

/// The global addresses of interface `index`.
fn addresses(nl: &mut Netlink, index: u32) -> Result<Vec<Cidr>, ReadError> {
    let msgs = nl.dump(
        "listing addresses",
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )?;
    let mut out = Vec::new();
    for m in &msgs {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        if a.header.index != index || a.header.scope != AddressScope::Universe {
            continue;
        }
        let mut local = None;
        let mut address = None;
        let mut failed = false;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Flags(f) => failed = f.contains(AddressFlags::Dadfailed),
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
        // peer's on point-to-point links); IPv6 has only IFA_ADDRESS.
        if let (Some(ip), false) = (local.or(address), failed) {
            let cidr = Cidr::new(ip, a.header.prefix_len).map_err(|source| ReadError::Config {
                name: format!("index {index}"),
                source,
            })?;
            out.push(cidr);
        }
    }
    Ok(out)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The routes of the main table through `link` that the kernel did not
/// add for an address.
fn routes(nl: &mut Netlink, link: &Link) -> Result<Vec<Route>, ReadError> {
    let msgs = nl.dump(
        "listing routes",
        RouteNetlinkMessage::GetRoute(RouteMessage::default()),
    )?;
    let mut out = Vec::new();
    for m in &msgs {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        let h = &r.header;
        let mut table = u32::from(h.table);
        let (mut dst, mut gateway, mut oif, mut metric, mut multipath) =
            (None, None, None, 0, false);
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(a) => dst = route_ip(a),
                RouteAttribute::Gateway(a) => gateway = route_ip(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Priority(p) => metric = *p,
                RouteAttribute::MultiPath(_) => multipath = true,
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN)
            || h.kind != RouteType::Unicast
            || h.protocol == RouteProtocol::Kernel
        {
            continue;
        }
        let any = match h.address_family {
            netlink_packet_route::AddressFamily::Inet => IpAddr::from([0u8; 4]),
            netlink_packet_route::AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
            _ => continue,
        };
        let destination =
            Cidr::new(dst.unwrap_or(any), h.destination_prefix_length).map_err(|source| {
                ReadError::Config {
                    name: link.name.clone(),
                    source,
                }
            })?;
        if multipath {
            return Err(ReadError::Multipath {
                name: link.name.clone(),
                destination: destination.to_string(),
            });
        }
        if oif != Some(link.index) {
            continue;
        }
        out.push(Route {
            destination,
            gateway,
            onlink: h.flags.contains(RouteFlags::Onlink),
            metric,
        });
    }
    Ok(out)
}
