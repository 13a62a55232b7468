//! Telling a ttrpc call that ran out of time from an error the other side
//! made, and (for tests) awaiting a call so that a missed deadline fails
//! with the call's name.

use std::future::Future;
use std::time::Duration;

/// True for the error ttrpc gives when a call's deadline passed, on the
/// client side or on the server side (not an error the peer made).
pub fn is_deadline(e: &ttrpc::Error) -> bool {
    match e {
        ttrpc::Error::Others(m) => m.starts_with("Receive packet timeout"),
        ttrpc::Error::RpcStatus(s) => {
            s.code() == ttrpc::Code::DEADLINE_EXCEEDED && s.message() == "timeout"
        }
        _ => false,
    }
}

/// For tests: awaits a call made with a deadline of `limit`; panics, naming
/// `what`, when that deadline passes (also, as a last resort, when the call
/// itself never returns).
pub async fn bounded<T>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = ttrpc::Result<T>>,
) -> ttrpc::Result<T> {
    match tokio::time::timeout(limit + Duration::from_secs(5), call).await {
        Ok(Err(e)) if is_deadline(&e) => panic!("{what}: no answer within {limit:?} ({e:?})"),
        Ok(r) => r,
        Err(_) => panic!("{what}: no answer within {limit:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_told_from_other_errors() {
        assert!(is_deadline(&ttrpc::Error::Others(
            "Receive packet timeout Elapsed(())".into()
        )));
        let timeout = ttrpc::get_status(ttrpc::Code::DEADLINE_EXCEEDED, "timeout");
        assert!(is_deadline(&ttrpc::Error::RpcStatus(timeout)));
        let other = ttrpc::get_status(ttrpc::Code::DEADLINE_EXCEEDED, "agent call timed out");
        assert!(!is_deadline(&ttrpc::Error::RpcStatus(other)));
        let unavailable = ttrpc::get_status(ttrpc::Code::UNAVAILABLE, "timeout");
        assert!(!is_deadline(&ttrpc::Error::RpcStatus(unavailable)));
    }
}
