//! Pod networking over rtnetlink, shared by the shim and the agent.
//!
//! - Host side ([`read`], [`tap`], [`tc`]): in the pod's network namespace
//!   (entered with [`netns::in_netns`]), the interface CNI made and its
//!   MAC, MTU, addresses and routes; the pod's TAP; the two-way tc
//!   redirect between the two.
//! - Guest side ([`apply`]): the interface with the pod's MAC configured
//!   as the host found it.
//!
//! [`model::InterfaceConfig`] is what travels between them (as text in the
//! agent protocol) and [`model::InterfaceConfig::validate`] bounds what
//! the agent accepts. Every socket is a blocking [`netlink::Netlink`] of
//! the calling thread's namespace.

pub mod apply;
pub mod link;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod read;
pub mod tap;
pub mod tc;

pub use model::{Cidr, ConfigError, InterfaceConfig, Mac, Route};
pub use netlink::{Netlink, NetlinkError};
