//! The lock library's error type: one enum whose kinds callers branch on.
//!
//! `SessionLost` and `Timeout` are outcomes a lock holder must handle; `Unavailable` means no
//! endpoint could be reached in time; `Rpc` carries any other answer etcd gave.

use std::time::Duration;

use super::LeaseId;

/// Why a session ended (the lease is gone, or may be gone, on the lock service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// The lock service answered that the lease no longer exists (revoked or expired there).
    LeaseNotFound,
    /// No renewal succeeded before the locally estimated expiry; the lease may be gone.
    Expired,
    /// The session was closed by its owner, which revokes the lease.
    Closed,
    /// The lock key was deleted while waiting or holding (revoked lease, or deleted by hand).
    KeyDeleted,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossReason::LeaseNotFound => "the lock service no longer knows the lease",
            LossReason::Expired => "no renewal before the locally estimated expiry",
            LossReason::Closed => "the session was closed",
            LossReason::KeyDeleted => "the lock key was deleted",
        })
    }
}

/// Errors of the lock client library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint answered within the timeout.
    #[error(
        "no etcd endpoint answered within {timeout:?} (endpoints: {endpoints}; last error: {cause})"
    )]
    Unavailable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// How long the client waited for an answer.
        timeout: Duration,
        /// The last endpoint's error, as text.
        cause: String,
    },

    /// An endpoint string could not be parsed.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it cannot be parsed.
        reason: String,
    },

    /// The TLS material given cannot be used (a file that cannot be read, a certificate
    /// without its key...).
    #[error("TLS configuration: {0}")]
    Tls(String),

    /// etcd refused the credentials (an unknown user or a wrong password).
    #[error("etcd authentication failed: {0}")]
    Auth(String),

    /// The session's lease is gone, or may be gone: the lock is not held any more.
    #[error("session lost (lease {lease}): {reason}")]
    SessionLost {
        /// The session's lease.
        lease: LeaseId,
        /// How the loss was noticed.
        reason: LossReason,
    },

    /// `try_lock` gave up waiting; its waiter key was deleted.
    #[error("timed out after {waited:?} waiting for lock {name:?}")]
    Timeout {
        /// The lock name.
        name: String,
        /// How long `try_lock` waited.
        waited: Duration,
    },

    /// This session already holds, or waits for, the lock name. A second holder on the same
    /// lease would share the first one's key and token, so it is refused.
    /// A call that failed is still cleaning up after itself (the lock service was not
    /// answering) and keeps the name until it is done.
    #[error("lock {name:?} is already held or awaited by this session")]
    AlreadyLocked {
        /// The lock name.
        name: String,
    },

    /// The lock name cannot be used: see `reason`. Names start with `/`, do not end with
    /// one, and so never reach the library's own keys ([`RESERVED_PREFIX`](super::RESERVED_PREFIX)).
    #[error("invalid lock name {name:?}: {reason}")]
    InvalidLockName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// etcd answered a request with an error.
    #[error("etcd {op} failed: {status}")]
    ///
    /// The status is shown in the message and is not a `source()`, so a cause chain prints
    /// it once.
    Rpc {
        /// The etcd call that failed (`"lease grant"`, `"range"`...).
        op: &'static str,
        /// etcd's answer, boxed to keep `Error` small.
        status: Box<tonic::Status>,
    },

    /// etcd answered in a way the protocol does not allow (a bug on one side).
    #[error("unexpected answer from etcd to {op}: {detail}")]
    Protocol {
        /// The etcd call whose answer is wrong.
        op: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

impl Error {
    pub(crate) fn rpc(op: &'static str, status: tonic::Status) -> Self {
        Error::Rpc {
            op,
            status: Box::new(status),
        }
    }

    /// Whether etcd refused the request by its rules for this request and user (a
    /// permission, a missing or unknown user, an argument it does not accept), which hold
    /// for every copy of it: such a request was not applied anywhere.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, Error::Rpc { status, .. } if matches!(
            status.code(),
            tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ))
    }

    pub(crate) fn protocol(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Protocol {
            op,
            detail: detail.into(),
        }
    }
}

/// The lock client's result: [`Error`] unless said otherwise.
pub type Result<T, E = Error> = std::result::Result<T, E>;
