//! Host side: the two-way tc redirect between the CNI interface and the
//! pod's TAP (Kata's "tcfilter" model): an ingress qdisc on each, and on
//! each a u32 filter matching every frame with a mirred action that
//! redirects it to the other's egress. No bridge, no address on the TAP:
//! what CNI set up stays as it is, whatever the plugin.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::link::Link;
use crate::netlink::{Netlink, NetlinkError};

/// The ingress qdisc's handle, `ffff:`.
const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};
/// `ETH_P_ALL`, as the low 16 bits of a filter's info (network order).
const ETH_P_ALL_BE: u32 = (libc::ETH_P_ALL as u16).to_be() as u32;
/// The filter's priority.
const FILTER_PRIO: u32 = 1;

/// Adds an ingress qdisc to `link`; fails if it has one already (someone
/// else's: it is never taken over).
pub fn add_ingress_qdisc(nl: &mut Netlink, link: &Link) -> Result<(), NetlinkError> {
    let mut m = TcMessage::default();
    m.header.index = link.index as i32;
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    nl.request(
        &format!("adding an ingress qdisc to {}", link.name),
        RouteNetlinkMessage::NewQueueDiscipline(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Redirects every frame arriving on `from` to the egress of `to`:
/// `tc filter add dev FROM parent ffff: protocol all prio 1 u32 match u32
/// 0 0 action mirred egress redirect dev TO`. Needs the ingress qdisc.
pub fn add_redirect(nl: &mut Netlink, from: &Link, to: &Link) -> Result<(), NetlinkError> {
    let mut key = TcU32Key::default();
    key.mask = 0;
    key.val = 0;
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![key];

    let mut mirred = TcMirror::default();
    mirred.generic.action = TcActionType::Stolen;
    mirred.eaction = TcMirrorActionType::EgressRedir;
    mirred.ifindex = to.index;
    let mut action = TcAction::default();
    action.tab = 1;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirred,
        ))]),
    ];

    let mut m = TcMessage::default();
    m.header.index = from.index as i32;
    m.header.parent = INGRESS_HANDLE;
    m.header.info = (FILTER_PRIO << 16) | ETH_P_ALL_BE;
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(sel)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    nl.request(
        &format!("redirecting {} to {}", from.name, to.name),
        RouteNetlinkMessage::NewTrafficFilter(m),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Connects `a` and `b` both ways (see the module header).
pub fn redirect_both_ways(nl: &mut Netlink, a: &Link, b: &Link) -> Result<(), NetlinkError> {
    add_ingress_qdisc(nl, a)?;
    add_ingress_qdisc(nl, b)?;
    add_redirect(nl, a, b)?;
    add_redirect(nl, b, a)
}

/// Removes the ingress qdisc of `link`, and with it its filters. Returns
/// whether there was one.
pub fn remove_ingress_qdisc(nl: &mut Netlink, link: &Link) -> Result<bool, NetlinkError> {
    let mut m = TcMessage::default();
    m.header.index = link.index as i32;
    m.header.handle = INGRESS_HANDLE;
    m.header.parent = TcHandle::INGRESS;
    match nl.request(
        &format!("removing the ingress qdisc of {}", link.name),
        RouteNetlinkMessage::DelQueueDiscipline(m),
        0,
    ) {
        Ok(()) => Ok(true),
        // No ingress qdisc there (ENOENT; EINVAL from older kernels).
        Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `link` has an ingress qdisc.
pub fn has_ingress_qdisc(nl: &mut Netlink, link: &Link) -> Result<bool, NetlinkError> {
    let msgs = nl.dump(
        "listing qdiscs",
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
    )?;
    Ok(msgs.iter().any(|m| {
        matches!(m, RouteNetlinkMessage::NewQueueDiscipline(q)
            if q.header.index == link.index as i32 && q.header.parent == TcHandle::INGRESS)
    }))
}
