//! The one place where agent errors become ttrpc statuses.
//!
//! Every module error enum implements [`RpcCode`]; the server turns any of
//! them into a ttrpc error with [`to_rpc_error`], keeping the whole cause
//! chain in the message (printed once, at this edge).

use ttrpc::Code;

/// The ttrpc code an error is reported with.
pub trait RpcCode: std::error::Error {
    fn rpc_code(&self) -> Code;
}

/// `err` as a ttrpc status error: its code and "msg: cause: cause...".
pub fn to_rpc_error<E: RpcCode>(err: E) -> ttrpc::Error {
    let code = err.rpc_code();
    let msg = chain(&err);
    if code == Code::INTERNAL || code == Code::UNKNOWN {
        tracing::warn!(error = %msg, "request failed");
    } else {
        tracing::debug!(error = %msg, ?code, "request refused");
    }
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

/// "outer: inner: innermost", skipping a source whose text the outer
/// message already ends with (transparent wrappers).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("disk on fire")]
        Fire,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("container {0} not found")]
        Missing(String),
        #[error("writing state")]
        Write(#[source] Inner),
    }

    impl RpcCode for Outer {
        fn rpc_code(&self) -> Code {
            match self {
                Outer::Missing(_) => Code::NOT_FOUND,
                Outer::Write(_) => Code::INTERNAL,
            }
        }
    }

    fn status(e: ttrpc::Error) -> ttrpc::Status {
        match e {
            ttrpc::Error::RpcStatus(s) => s,
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn keeps_code_and_chain() {
        let s = status(to_rpc_error(Outer::Missing("c1".into())));
        assert_eq!(s.code(), Code::NOT_FOUND);
        assert_eq!(s.message(), "container c1 not found");
        let s = status(to_rpc_error(Outer::Write(Inner::Fire)));
        assert_eq!(s.code(), Code::INTERNAL);
        assert_eq!(s.message(), "writing state: disk on fire");
    }
}
