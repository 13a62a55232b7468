//! Network interfaces: listing them, bringing one up with an MTU, deleting
//! one.

use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::model::Mac;
use crate::netlink::{Netlink, NetlinkError};

/// One interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address, when it is a MAC.
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// `veth`, `tun`, `macvlan`...; `None` for a physical device.
    pub kind: Option<String>,
    /// An Ethernet device (`ARPHRD_ETHER`).
    pub ether: bool,
    pub loopback: bool,
    pub up: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            kind: None,
            ether: m.header.link_layer_type == LinkLayerType::Ether,
            loopback: m.header.flags.contains(LinkFlags::Loopback),
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::Address(b) => {
                    link.mac = <[u8; 6]>::try_from(b.as_slice()).ok().map(Mac);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = Some(kind_name(k));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Other(s) => s.clone(),
        k => k.to_string(),
    }
}

/// Every interface of the socket's network namespace.
pub fn links(nl: &mut Netlink) -> Result<Vec<Link>, NetlinkError> {
    let msgs = nl.dump(
        "listing interfaces",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })
        .collect())
}

/// Sets interface `index` up, with `mtu` when given.
pub fn set_up(nl: &mut Netlink, link: &Link, mtu: Option<u32>) -> Result<(), NetlinkError> {
    let mut m = LinkMessage::default();
    m.header.index = link.index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    let what = match mtu {
        Some(mtu) => format!("setting {} up with MTU {mtu}", link.name),
        None => format!("setting {} up", link.name),
    };
    nl.request(&what, RouteNetlinkMessage::SetLink(m), 0)
}

/// Gives interface `link` the hardware address `mac`.
pub fn set_address(nl: &mut Netlink, link: &Link, mac: Mac) -> Result<(), NetlinkError> {
    let mut m = LinkMessage::default();
    m.header.index = link.index;
    m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    nl.request(
        &format!("setting the MAC of {} to {mac}", link.name),
        RouteNetlinkMessage::SetLink(m),
        0,
    )
}

/// Deletes interface `index`.
pub fn delete(nl: &mut Netlink, link: &Link) -> Result<(), NetlinkError> {
    let mut m = LinkMessage::default();
    m.header.index = link.index;
    nl.request(
        &format!("deleting interface {}", link.name),
        RouteNetlinkMessage::DelLink(m),
        0,
    )
}
