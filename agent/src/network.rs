//! The pod's network interfaces (CreateSandbox): what the host found in
//! the pod's network namespace, checked here (the request is the host's,
//! but nothing in it is applied unchecked), then configured with
//! netlink on the guest's NIC of the same MAC, before any container runs.

use cocoon_agent_protocol::agent::Interface;
use cocoon_netconf::apply::{apply, ApplyError};
use cocoon_netconf::{Cidr, ConfigError, InterfaceConfig, Netlink, NetlinkError, Route};
use ttrpc::Code;

use crate::error_code::RpcCode;

/// Most interfaces one request may configure.
pub const MAX_INTERFACES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{count} interfaces given, at most {MAX_INTERFACES} are supported")]
    TooMany { count: usize },
    #[error("interface {index}")]
    Invalid {
        index: usize,
        #[source]
        source: ConfigError,
    },
    #[error("interface {index}, route {route}: gateway {gateway:?}")]
    Gateway {
        index: usize,
        route: usize,
        gateway: String,
        #[source]
        source: ConfigError,
    },
    #[error("configuring interface {mac}")]
    Apply {
        mac: String,
        #[source]
        source: ApplyError,
    },
    #[error("opening a netlink socket")]
    Netlink(#[source] NetlinkError),
}

impl RpcCode for NetworkError {
    fn rpc_code(&self) -> Code {
        match self {
            NetworkError::Apply {
                source: ApplyError::Netlink(_),
                ..
            }
            | NetworkError::Netlink(_) => Code::INTERNAL,
            _ => Code::INVALID_ARGUMENT,
        }
    }
}

/// The wire form of one interface, parsed and checked.
pub fn parse(index: usize, i: &Interface) -> Result<InterfaceConfig, NetworkError> {
    let invalid = |source| NetworkError::Invalid { index, source };
    let addresses = i
        .addresses
        .iter()
        .map(|a| a.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let mut routes = Vec::with_capacity(i.routes.len());
    for (n, r) in i.routes.iter().enumerate() {
        let gateway = if r.gateway.is_empty() {
            None
        } else {
            Some(r.gateway.parse().map_err(|_| NetworkError::Gateway {
                index,
                route: n,
                gateway: r.gateway.clone(),
                source: ConfigError::BadIp(r.gateway.clone()),
            })?)
        };
        routes.push(Route {
            destination: r.destination.parse().map_err(invalid)?,
            gateway,
            onlink: r.onlink,
            metric: r.metric,
        });
    }
    let cfg = InterfaceConfig {
        mac: i.mac.parse().map_err(invalid)?,
        device_mac: if i.device_mac.is_empty() {
            None
        } else {
            Some(i.device_mac.parse().map_err(invalid)?)
        },
        mtu: i.mtu,
        addresses,
        routes,
    };
    cfg.validate().map_err(invalid)?;
    Ok(cfg)
}

/// Checks every interface first, then configures each; returns the
/// guest's names for them.
pub fn configure(interfaces: &[Interface]) -> Result<Vec<String>, NetworkError> {
    if interfaces.is_empty() {
        return Ok(Vec::new());
    }
    if interfaces.len() > MAX_INTERFACES {
        return Err(NetworkError::TooMany {
            count: interfaces.len(),
        });
    }
    let configs = interfaces
        .iter()
        .enumerate()
        .map(|(n, i)| parse(n, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut nl = Netlink::open().map_err(NetworkError::Netlink)?;
    let mut names = Vec::new();
    for cfg in &configs {
        let link = apply(&mut nl, cfg).map_err(|source| NetworkError::Apply {
            mac: cfg.mac.to_string(),
            source,
        })?;
        tracing::debug!(
            interface = %link.name,
            mac = %cfg.mac,
            mtu = cfg.mtu,
            addresses = cfg.addresses.len(),
            routes = cfg.routes.len(),
            "pod interface configured"
        );
        names.push(link.name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_agent_protocol::agent::Route as WireRoute;

    fn wire() -> Interface {
        let mut i = Interface::new();
        i.mac = "02:42:0a:63:00:02".into();
        i.mtu = 1500;
        i.addresses = vec!["10.99.0.2/24".into()];
        let mut r = WireRoute::new();
        r.destination = "0.0.0.0/0".into();
        r.gateway = "10.99.0.1".into();
        i.routes = vec![r];
        i
    }

    #[test]
    fn wire_form_parses_and_bad_fields_are_named() {
        let cfg = parse(0, &wire()).unwrap();
        assert_eq!(cfg.addresses[0].to_string(), "10.99.0.2/24");
        assert_eq!(cfg.routes[0].gateway, Some("10.99.0.1".parse().unwrap()));
        let err = |f: &dyn Fn(&mut Interface)| {
            let mut i = wire();
            f(&mut i);
            let e = parse(3, &i).unwrap_err();
            assert_eq!(e.rpc_code(), Code::INVALID_ARGUMENT);
            crate::error_code::chain(&e)
        };
        assert!(
            err(&|i| i.mac = "nope".into()).contains("interface 3: \"nope\" is not a unicast MAC")
        );
        assert!(err(&|i| i.addresses.push("10.0.0.1".into()))
            .contains("not an address with a prefix length"));
        assert!(err(&|i| i.routes[0].gateway = "10.99.0".into())
            .contains("route 0: gateway \"10.99.0\""));
        assert!(err(&|i| i.routes[0].destination = "10.1.2.3/8".into())
            .contains("bits set past its prefix"));
        assert!(err(&|i| i.mtu = 9).contains("MTU 9"));
        let too_many = vec![wire(); MAX_INTERFACES + 1];
        assert!(configure(&too_many)
            .unwrap_err()
            .to_string()
            .contains("9 interfaces given"));
        assert!(configure(&[]).unwrap().is_empty());
    }
}
