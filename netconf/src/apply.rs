//! Guest side: gives the interface with the pod's MAC the pod's MTU,
//! addresses and routes, and brings it and loopback up. A VM restored from
//! a template finds its NIC by the template's MAC and gives it the pod's.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::link::{links, set_address, set_up, Link};
use crate::model::{ConfigError, InterfaceConfig, Route};
use crate::netlink::{Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("invalid interface configuration")]
    Invalid(#[from] ConfigError),
    #[error("no interface has MAC {mac} (interfaces: {found})")]
    NoSuchMac { mac: String, found: String },
    #[error("{count} interfaces have MAC {mac}")]
    AmbiguousMac { mac: String, count: usize },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Configures the interface whose MAC is `cfg.mac` (after checking `cfg`)
/// and brings loopback up. Addresses and routes are set with replace
/// semantics (a second call changes nothing); link routes go in before
/// the routes whose gateway they make reachable. Returns the interface.
pub fn apply(nl: &mut Netlink, cfg: &InterfaceConfig) -> Result<Link, ApplyError> {
    cfg.validate()?;
    let mut all = links(nl)?;
    // A restored VM's NIC has the template's MAC: it is given the pod's
    // first (unless a previous call did).
    if let Some(device_mac) = cfg.device_mac {
        let has_pod_mac = all.iter().any(|l| l.mac == Some(cfg.mac));
        let with_device_mac: Vec<&Link> =
            all.iter().filter(|l| l.mac == Some(device_mac)).collect();
        if !has_pod_mac {
            if let [one] = with_device_mac.as_slice() {
                set_address(nl, one, cfg.mac)?;
                all = links(nl)?;
            }
        }
    }
    let matching: Vec<&Link> = all.iter().filter(|l| l.mac == Some(cfg.mac)).collect();
    let link = match matching.as_slice() {
        [one] => (*one).clone(),
        [] => {
            let found = all
                .iter()
                .map(|l| match l.mac {
                    Some(m) => format!("{} {m}", l.name),
                    None => l.name.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ApplyError::NoSuchMac {
                mac: cfg.mac.to_string(),
                found,
            });
        }
        many => {
            return Err(ApplyError::AmbiguousMac {
                mac: cfg.mac.to_string(),
                count: many.len(),
            })
        }
    };
    for lo in all.iter().filter(|l| l.loopback && !l.up) {
        set_up(nl, lo, None)?;
    }
    set_up(nl, &link, Some(cfg.mtu))?;
    for a in &cfg.addresses {
        let mut m = AddressMessage::default();
        m.header.family = family(a.addr);
        m.header.prefix_len = a.prefix;
        m.header.scope = AddressScope::Universe;
        m.header.index = link.index;
        m.attributes.push(AddressAttribute::Local(a.addr));
        m.attributes.push(AddressAttribute::Address(a.addr));
        if a.addr.is_ipv6() {
            // The host already owns the address (CNI made it in the pod's
            // namespace): no duplicate detection, usable at once.
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        nl.request(
            &format!("adding address {a} to {}", link.name),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    let (on_link, via): (Vec<&Route>, Vec<&Route>) =
        cfg.routes.iter().partition(|r| r.gateway.is_none());
    for r in on_link.into_iter().chain(via) {
        nl.request(
            &format!("adding the route to {} on {}", r.destination, link.name),
            RouteNetlinkMessage::NewRoute(route_message(r, link.index)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    Ok(link)
}

fn route_message(r: &Route, index: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(r.destination.addr);
    m.header.destination_prefix_length = r.destination.prefix;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = if r.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if r.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    if r.destination.prefix > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                r.destination.addr,
            )));
    }
    if let Some(gw) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    m.attributes.push(RouteAttribute::Oif(index));
    if r.metric != 0 {
        m.attributes.push(RouteAttribute::Priority(r.metric));
    }
    m
}
