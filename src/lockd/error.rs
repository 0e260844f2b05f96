//! Errors answered with etcd's gRPC codes and messages, so that etcd's clients react to lockd
//! as they do to etcd (a client recognises "lease not found" or "compacted" by them).

/// A refused request, worded as etcd words it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// The request names no key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// The key to act on does not exist (a put with `ignore_value` or `ignore_lease`).
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put gives a value together with `ignore_value`.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put gives a lease together with `ignore_lease`.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A transaction has more compares or operations in a branch than etcd allows.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A transaction puts a key twice, or both puts and deletes it, on one path.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The requested revision is older than the history kept.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision has not happened yet.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// No lease has the given ID.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with the requested ID is already granted.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The requested TTL is longer than etcd allows.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A watch with the requested ID is already open on the stream.
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
    /// The gRPC status code etcd answers this error with.
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
