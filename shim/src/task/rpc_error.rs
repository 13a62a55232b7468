//! The one place where errors become ttrpc status codes.

use ttrpc::{Code, Error, Status};

use crate::agent_client::AgentError;

pub fn status(code: Code, msg: impl Into<String>) -> Error {
    let mut s = Status::new();
    s.code = code.into();
    s.message = msg.into();
    Error::RpcStatus(s)
}

pub fn not_found(what: impl std::fmt::Display) -> Error {
    status(Code::NOT_FOUND, format!("{what}: not found"))
}

pub fn invalid(msg: impl Into<String>) -> Error {
    status(Code::INVALID_ARGUMENT, msg)
}

pub fn precondition(msg: impl Into<String>) -> Error {
    status(Code::FAILED_PRECONDITION, msg)
}

pub fn unimplemented(method: &str) -> Error {
    status(
        Code::UNIMPLEMENTED,
        format!("{method} is not implemented by the cocoon runtime"),
    )
}

/// The whole cause chain, printed once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn internal(e: &dyn std::error::Error) -> Error {
    status(Code::INTERNAL, chain(e))
}

/// Keeps the agent's own code (NotFound, InvalidArgument, ...); transport
/// failures are Unavailable.
pub fn from_agent(e: AgentError) -> Error {
    match &e {
        AgentError::Rpc {
            rpc,
            source: Error::RpcStatus(s),
        } => {
            let mut s = s.clone();
            s.message = format!("agent {rpc}: {}", s.message);
            Error::RpcStatus(s)
        }
        _ => status(Code::UNAVAILABLE, chain(&e)),
    }
}
