//! The fence carried into the user's own data: adapters that apply the fence rule atomically
//! with the caller's change, in the resource that holds the data.
//!
//! fencelock's storage server checks tokens itself; most data lives elsewhere. Each adapter
//! here applies [`storage::fence::check`](crate::storage::fence::check)'s rule (below the
//! fence refused, equal accepted, above raises the fence) in the same atomic step as the
//! caller's change, using the resource's own atomicity:
//! - [`postgres`] (feature `postgres`): a fence row per lock name, checked and raised inside
//!   the caller's transaction, so the commit makes both durable together; the same rule as a
//!   SQL function for programs in any language.
//! - [`etcd`] (feature `client`): writes to keys in etcd (or lockd) applied by one Txn only
//!   while the holder's lock key still exists with its create_revision, optionally also
//!   raising a fence key that readers who hold no lock can consult.
//! - [`CasResource`] and [`apply`]: the rule over any resource with a compare-and-swap (an
//!   object store's conditional write, a key/value store's version check), so a further
//!   resource adds only its read and its swap, never its own copy of the rule.
//!
//! What every adapter guarantees: once a change under token `t` has been accepted for a
//! fence, no change under a token below `t` is applied for that fence, whatever the timing.
//! What none can guarantee: changes made to the same data without going through the fence
//! (every writer of the guarded data must use the same fence name).

#[cfg(feature = "client")]
pub mod etcd;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::future::Future;

use crate::FencingToken;
use crate::storage::fence::{Access, Policy, Rejection, check};

/// Where fenced data lives: fencelock's storage, or one of the adapters here. The tools
/// (`demo`, `check`, `client`) take it as `--resource`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    /// fencelock's storage server, which checks tokens itself (under its `--fencing` policy).
    #[default]
    Storage,
    /// A PostgreSQL table, fenced by [`postgres`].
    Postgres,
    /// Keys in the lock service itself, fenced by [`etcd`].
    Etcd,
}

impl Resource {
    /// The name on the command line and in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Storage => "storage",
            Resource::Postgres => "postgres",
            Resource::Etcd => "etcd",
        }
    }

    /// The name in sentences: "the storage", "PostgreSQL", "etcd".
    pub fn display_name(self) -> &'static str {
        match self {
            Resource::Storage => "the storage",
            Resource::Postgres => "PostgreSQL",
            Resource::Etcd => "etcd",
        }
    }
}

/// A change refused because its token is behind the fence: a newer holder of the lock has
/// already changed the resource. Nothing of the refused change was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token for fence {fence:?}: presented {presented}, current {current}")]
pub struct StaleToken {
    /// The fence (lock name) that refused the token.
    pub fence: String,
    /// The token the change carried.
    pub presented: FencingToken,
    /// The newest token the fence has accepted.
    pub current: FencingToken,
}

/// A resource that keeps each fence's token beside the data it guards and changes both with
/// one compare-and-swap. [`apply`] runs the fence rule over it.
pub trait CasResource {
    /// What the swap compares: the fence's version as the resource numbers it (an etcd
    /// mod_revision, an object's ETag). Absent fences have a version too (etcd: 0).
    type Version: Send + Sync;
    /// The caller's change, applied together with the fence.
    type Change: Sync + ?Sized;
    /// What a committed change answers.
    type Output;
    /// The resource's own failures (I/O, permissions, a lost lock).
    type Error;

    /// The fence's current token (`None` when no change was ever accepted under it) and its
    /// version.
    fn read_fence(
        &self,
        fence: &str,
    ) -> impl Future<Output = Result<(Option<FencingToken>, Self::Version), Self::Error>> + Send;

    /// Applies `change`, and sets the fence to `raise_to` when given, in one atomic step that
    /// happens only if the fence is still at `version`. `Ok(None)` when the version moved
    /// (someone changed the fence since it was read): nothing was applied.
    fn swap(
        &self,
        fence: &str,
        version: &Self::Version,
        raise_to: Option<FencingToken>,
        change: &Self::Change,
    ) -> impl Future<Output = Result<Option<Self::Output>, Self::Error>> + Send;
}

/// Why [`apply`] did not apply a change.
#[derive(Debug, thiserror::Error)]
pub enum FenceError<E> {
    /// The token is behind the fence.
    #[error(transparent)]
    Stale(StaleToken),
    /// The resource failed; whether the change was applied is as the resource says.
    #[error(transparent)]
    Resource(E),
}

/// Applies `change` to `resource` under `token`, following the fence rule: refused when the
/// token is below the fence, applied when equal, applied and raising the fence when above.
/// The read and the swap repeat while another writer moves the fence in between; each
/// repetition means that writer's change went through.
pub async fn apply<R: CasResource>(
    resource: &R,
    fence: &str,
    token: FencingToken,
    change: &R::Change,
) -> Result<R::Output, FenceError<R::Error>> {
    loop {
        let (current, version) = resource
            .read_fence(fence)
            .await
            .map_err(FenceError::Resource)?;
        let accepted = check(Policy::Strict, Access::Write, fence, Some(token), current)
            .map_err(|rejection| FenceError::Stale(stale(rejection, token)))?;
        if let Some(output) = resource
            .swap(fence, &version, accepted.raise_to, change)
            .await
            .map_err(FenceError::Resource)?
        {
            return Ok(output);
        }
    }
}

/// The strict rule with a token present refuses only as stale.
fn stale(rejection: Rejection, presented: FencingToken) -> StaleToken {
    match rejection {
        Rejection::Stale { fence, current, .. } => StaleToken {
            fence,
            presented,
            current,
        },
        other => unreachable!("the strict rule with a token refused otherwise: {other}"),
    }
}
