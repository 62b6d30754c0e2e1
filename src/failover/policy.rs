//! Which failures fail over, per route and per operation class.

use crate::backend::BackendError;
use crate::config::FailoverOn;

/// The route grammar's operation classes (docs/architecture.md): get, set, delete, other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    Get,
    Set,
    Delete,
    Other,
}

/// Why a try failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    /// Connection refused or another connect error.
    Refused,
    /// The server is marked down (TKO): the request was never sent.
    Tko,
    /// A `SERVER_ERROR` reply, a broken connection, or no server to send to.
    ServerError,
}

impl Failure {
    /// The failure a backend connection reported.
    pub fn of(e: &BackendError) -> Failure {
        match e {
            BackendError::Timeout(_) => Failure::Timeout,
            BackendError::Connect(_) | BackendError::Auth(_) => Failure::Refused,
            BackendError::Down => Failure::Tko,
            BackendError::Closed(_) | BackendError::Protocol(_) => Failure::ServerError,
        }
    }
}

/// True when a try that failed with `failure` should go on to the next child.
pub fn fails_over(on: FailoverOn, writes: bool, class: OpClass, failure: Failure) -> bool {
    if class == OpClass::Set && !writes {
        return false;
    }
    match failure {
        Failure::Timeout => on.timeout,
        Failure::Refused => on.refused,
        Failure::Tko => on.tko,
        Failure::ServerError => on.server_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_false_keeps_sets_and_on_filters_kinds() {
        let all = FailoverOn::default();
        assert!(fails_over(all, true, OpClass::Set, Failure::Timeout));
        assert!(!fails_over(all, false, OpClass::Set, Failure::Timeout));
        assert!(fails_over(all, false, OpClass::Get, Failure::Timeout));
        assert!(fails_over(all, false, OpClass::Delete, Failure::Tko));
        let only_tko = FailoverOn {
            timeout: false,
            refused: false,
            tko: true,
            server_error: false,
        };
        assert!(fails_over(only_tko, true, OpClass::Get, Failure::Tko));
        assert!(!fails_over(only_tko, true, OpClass::Get, Failure::Timeout));
        assert!(!fails_over(
            only_tko,
            true,
            OpClass::Get,
            Failure::ServerError
        ));
        assert!(!fails_over(only_tko, true, OpClass::Get, Failure::Refused));
    }
}
