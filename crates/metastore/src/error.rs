use thiserror::Error;

pub type Result<T, E = MetaStoreError> = std::result::Result<T, E>;

/// Every failure of a [`MetaStore`](crate::MetaStore) call. None of them means a transaction
/// was partially applied; `Unavailable` on `txn` means its outcome is unknown.
#[derive(Debug, Error)]
pub enum MetaStoreError {
    /// The backend could not be reached or refused service (etcd down, no quorum, timeout,
    /// embedded file locked by another process). Retrying later may succeed.
    #[error("metastore unavailable at {endpoint}: {reason}")]
    Unavailable { endpoint: String, reason: String },

    /// Stored data does not have the expected shape.
    #[error("metastore data is corrupt: {0}")]
    Corrupt(String),

    #[error("metastore I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// A watch asked for history the backend no longer keeps (or a watcher fell behind and
    /// its buffered events were dropped). `revision` is the oldest revision still available
    /// (0 if unknown); re-read state with `range` and watch again from its revision + 1.
    #[error("revisions before {revision} are compacted (no longer available to watch)")]
    Compacted { revision: u64 },

    /// The request breaks a rule of the contract (empty key, duplicate key in a txn branch,
    /// too many ops for the backend, ...). Nothing was applied.
    #[error("invalid metastore request: {0}")]
    InvalidArgument(String),

    /// Any other backend failure.
    #[error("metastore backend error: {0}")]
    Backend(String),
}
