//! Errors answered with etcd's gRPC codes and messages, so that etcd's clients react to lockd
//! as they do to etcd (a client recognises "lease not found" or "compacted" by them).

/// A refused request, worded as etcd words it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: watch ID already exists")]
    DuplicateWatchId,
    /// The request is longer than `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The write would grow the live keys and values past `--quota-backend-bytes`.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The revision reservation could not be made durable: nothing was changed.
    #[error("lockd: cannot reserve a revision: {0}")]
    Storage(String),
}

impl EtcdError {
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::EmptyKey
            | Self::KeyNotFound
            | Self::ValueProvided
            | Self::LeaseProvided
            | Self::TooManyOps
            | Self::DuplicateKey
            | Self::RequestTooLarge => Code::InvalidArgument,
            Self::NoSpace => Code::ResourceExhausted,
            Self::Compacted | Self::FutureRevision | Self::LeaseTtlTooLarge => Code::OutOfRange,
            Self::LeaseNotFound => Code::NotFound,
            Self::LeaseExists | Self::DuplicateWatchId => Code::FailedPrecondition,
            Self::Storage(_) => Code::Unavailable,
        }
    }
}

impl From<EtcdError> for tonic::Status {
    fn from(error: EtcdError) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}
