//! Token verification against the lock service (`--verify-tokens`), what Chubby called
//! checking a sequencer: a token is accepted only while it is the create_revision of the
//! lock key that holds the fence's lock name.
//!
//! The fence alone refuses a stale holder only once a newer holder has written, and it takes
//! any token it is shown, so one request with a forged token near `i64::MAX` would lock a
//! fence out for good. Verification closes both: a token that was never a lock key's
//! create_revision under the lock name is refused (`unknown_token`), one whose lock key is
//! gone (`holder_gone`) too, and one of a key still waiting behind the holder (`not_holder`).
//!
//! How: the first request naming a lock name reads the lock's keys (the direct children of
//! `<name>/`) and starts a watch from that read's revision, which keeps the set of live
//! keys up to date; after a disconnect the watch resumes from the last revision it applied,
//! and when that revision is compacted the keys are read again. A token the set does not
//! show (a holder newer than the last event, a watch behind) is settled by reading the keys
//! again, linearizably, before anything is refused. The set lags the lock service by the
//! watch's delay: a holder whose key went a moment ago may still be accepted, and the fence
//! rule then still applies.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::FencingToken;
use crate::etcd::etcdserverpb as pb;
use crate::etcd::mvccpb::event::EventType;
use crate::etcd::prefix_end;
use crate::lock::{Client, PrefixWatch};

/// Deleted keys remembered per lock name, to tell `holder_gone` from `unknown_token`.
const GONE_KEPT: usize = 65_536;

/// How long a watch that failed waits before it starts again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Why a token was refused, or could not be checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    /// No lock key under the name was ever created at this revision.
    #[error("token {token} was never handed out for lock {fence:?}")]
    UnknownToken {
        /// The lock name.
        fence: String,
        /// The token presented.
        token: FencingToken,
    },
    /// The lock key created at this revision is gone: its holder released it or lost it.
    #[error("the holder of token {token} no longer holds lock {fence:?}")]
    HolderGone {
        /// The lock name.
        fence: String,
        /// The token presented.
        token: FencingToken,
    },
    /// The token's lock key exists but waits behind the holder's.
    #[error("token {token} belongs to a waiter of lock {fence:?}, not to its holder")]
    NotHolder {
        /// The lock name.
        fence: String,
        /// The token presented.
        token: FencingToken,
    },
    /// The request names no lock, so there is nothing to verify its token against.
    #[error(
        "key {key:?}: a fenced request must name its lock (?fence=NAME) when tokens are verified"
    )]
    NoLockName {
        /// The request's key.
        key: String,
    },
    /// The lock service could not be asked.
    #[error("cannot verify the token with the lock service: {0}")]
    Unavailable(String),
}

/// The tokens of each followed lock name.
pub struct Verifier {
    client: Client,
    names: RwLock<HashMap<String, Arc<Followed>>>,
}

/// One lock name's keys as the watch has them.
struct Followed {
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    /// create_revisions of the live lock keys; the lowest is the holder's.
    live: BTreeSet<i64>,
    /// create_revisions of keys seen deleted, the newest `GONE_KEPT`.
    gone: HashSet<i64>,
    gone_order: VecDeque<i64>,
    /// The revision the set reflects: every change up to it is applied.
    synced: i64,
    /// The revision of the first read: changes before it were never seen.
    since: i64,
}

impl Known {
    fn created(&mut self, revision: i64) {
        self.live.insert(revision);
    }

    fn deleted(&mut self, revision: i64) {
        if self.live.remove(&revision) && self.gone.insert(revision) {
            self.gone_order.push_back(revision);
            if self.gone_order.len() > GONE_KEPT
                && let Some(old) = self.gone_order.pop_front()
            {
                self.gone.remove(&old);
            }
        }
    }

    /// Takes the lock's keys as read at `revision`, when that is newer than what is known:
    /// the keys no longer among them are gone.
    fn replace(&mut self, live: BTreeSet<i64>, revision: i64) {
        if revision <= self.synced {
            return;
        }
        let ended: Vec<i64> = self.live.difference(&live).copied().collect();
        for created in ended {
            self.deleted(created);
        }
        self.live = live;
        self.synced = revision;
    }

    /// The verdict from what is known; `None` when only a fresh read can tell.
    fn verdict(&self, fence: &str, token: FencingToken) -> Option<Result<(), Unverified>> {
        let revision = i64::try_from(token.get()).unwrap_or(i64::MAX);
        if self.live.first() == Some(&revision) {
            return Some(Ok(()));
        }
        let fence = fence.to_owned();
        if self.gone.contains(&revision) {
            return Some(Err(Unverified::HolderGone { fence, token }));
        }
        if revision > self.synced || self.live.contains(&revision) {
            // Newer than the set, or a waiter that may have become the holder since.
            return None;
        }
        if revision > self.since && self.gone_order.len() < GONE_KEPT {
            // Every creation after `since` was seen, and this one was not among them.
            return Some(Err(Unverified::UnknownToken { fence, token }));
        }
        None
    }
}

impl Verifier {
    /// A verifier asking the lock service behind `client`.
    pub fn new(client: Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            names: RwLock::new(HashMap::new()),
        })
    }

    /// Whether `token` is the create_revision of the key that holds lock `fence` now.
    pub async fn verify(&self, fence: &str, token: FencingToken) -> Result<(), Unverified> {
        let followed = self.follow(fence).await?;
        if let Some(verdict) = lock(&followed.known).verdict(fence, token) {
            return verdict;
        }
        // Read the keys again (linearizably): the set may be behind the holder.
        let revision = self.refresh(fence, &followed).await?;
        if let Some(verdict) = lock(&followed.known).verdict(fence, token) {
            return verdict;
        }
        let token_revision = i64::try_from(token.get()).unwrap_or(i64::MAX);
        if lock(&followed.known).live.contains(&token_revision) {
            return Err(Unverified::NotHolder {
                fence: fence.to_owned(),
                token,
            });
        }
        if token_revision > revision {
            // Past the lock service's own revision: no key can have been created there.
            return Err(Unverified::UnknownToken {
                fence: fence.to_owned(),
                token,
            });
        }
        self.classify_past(fence, token).await
    }

    /// The followed state of `fence`, reading its keys and starting its watch on first use.
    async fn follow(&self, fence: &str) -> Result<Arc<Followed>, Unverified> {
        let known = self
            .names
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(fence)
            .cloned();
        if let Some(followed) = known {
            return Ok(followed);
        }
        let followed = Arc::new(Followed {
            known: Mutex::new(Known::default()),
        });
        let revision = self.refresh(fence, &followed).await?;
        lock(&followed.known).since = revision;
        let mut names = self
            .names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(raced) = names.get(fence) {
            return Ok(raced.clone());
        }
        names.insert(fence.to_owned(), followed.clone());
        drop(names);
        tokio::spawn(watch(
            self.client.clone(),
            fence.to_owned(),
            Arc::downgrade(&followed),
        ));
        Ok(followed)
    }

    /// Reads the lock's keys and makes them the live set; the read's revision.
    async fn refresh(&self, fence: &str, followed: &Followed) -> Result<i64, Unverified> {
        let (live, revision) = read_keys(&self.client, fence, 0).await?;
        lock(&followed.known).replace(live, revision);
        Ok(revision)
    }

    /// Settles a token from before the name was followed: was a key under the name created
    /// at that revision? (Read at that revision; compacted history cannot tell, and then
    /// the token counts as gone.)
    async fn classify_past(&self, fence: &str, token: FencingToken) -> Result<(), Unverified> {
        let revision = i64::try_from(token.get()).unwrap_or(i64::MAX);
        match read_keys(&self.client, fence, revision).await {
            Ok((keys, _)) if keys.contains(&revision) => Err(Unverified::HolderGone {
                fence: fence.to_owned(),
                token,
            }),
            Ok(_) => Err(Unverified::UnknownToken {
                fence: fence.to_owned(),
                token,
            }),
            Err(_) => Err(Unverified::HolderGone {
                fence: fence.to_owned(),
                token,
            }),
        }
    }
}

/// The create_revisions of the lock keys of `fence` (direct children of `<fence>/`) at
/// `revision` (0: now), and the revision read.
async fn read_keys(
    client: &Client,
    fence: &str,
    revision: i64,
) -> Result<(BTreeSet<i64>, i64), Unverified> {
    let prefix = format!("{fence}/");
    let request = pb::RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
        keys_only: true,
        revision,
        ..Default::default()
    };
    let response = client
        .range(request)
        .await
        .map_err(|e| Unverified::Unavailable(e.to_string()))?;
    let keys = response
        .kvs
        .iter()
        .filter(|kv| is_lock_key(&prefix, &kv.key))
        .map(|kv| kv.create_revision)
        .collect();
    let read = response.header.map_or(0, |h| h.revision);
    Ok((keys, read))
}

/// A direct child of `prefix`: `<name>/<lease>`, not a key of a lock named under it.
fn is_lock_key(prefix: &str, key: &[u8]) -> bool {
    key.strip_prefix(prefix.as_bytes())
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(&b'/'))
}

/// Keeps `followed` up to date until it is dropped: a watch from the last applied revision,
/// started again after a failure, and a fresh read when that revision is compacted.
async fn watch(client: Client, fence: String, followed: std::sync::Weak<Followed>) {
    let prefix = format!("{fence}/");
    loop {
        let Some(state) = followed.upgrade() else {
            return;
        };
        let from = lock(&state.known).synced + 1;
        drop(state);
        let mut watch = match PrefixWatch::start(&client, prefix.as_bytes(), from).await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::debug!(%fence, "token verification: cannot watch the lock: {e}");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        loop {
            match watch.next().await {
                Ok(Some(events)) => {
                    let Some(state) = followed.upgrade() else {
                        return;
                    };
                    let mut known = lock(&state.known);
                    for event in events {
                        let Some(kv) = event.kv else { continue };
                        if kv.mod_revision <= known.synced || !is_lock_key(&prefix, &kv.key) {
                            continue;
                        }
                        if event.r#type == EventType::Delete as i32 {
                            let created = event.prev_kv.map(|prev| prev.create_revision);
                            if let Some(created) = created {
                                known.deleted(created);
                            }
                        } else if kv.version == 1 {
                            known.created(kv.create_revision);
                        }
                        known.synced = kv.mod_revision;
                    }
                }
                Ok(None) | Err(_) => {
                    // Ended (compacted, cancelled) or broken: read the keys afresh and
                    // resume after them.
                    if let Some(state) = followed.upgrade()
                        && let Ok((live, revision)) = read_keys(&client, &fence, 0).await
                    {
                        lock(&state.known).replace(live, revision);
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                    break;
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves the sets consistent (each change is one call).
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> FencingToken {
        FencingToken::new(n).unwrap()
    }

    #[test]
    fn only_the_holders_token_passes_on_what_is_known() {
        let mut known = Known {
            since: 10,
            synced: 50,
            ..Known::default()
        };
        known.created(20);
        known.created(30);
        known.created(40);
        known.deleted(20);
        assert_eq!(known.verdict("/l", t(30)), Some(Ok(())));
        assert!(matches!(
            known.verdict("/l", t(20)),
            Some(Err(Unverified::HolderGone { .. }))
        ));
        // Seen since revision 10 and never created: unknown without asking.
        assert!(matches!(
            known.verdict("/l", t(25)),
            Some(Err(Unverified::UnknownToken { .. }))
        ));
        // A waiter's token, a token newer than the set, one from before `since`: ask again.
        assert_eq!(known.verdict("/l", t(40)), None);
        assert_eq!(known.verdict("/l", t(51)), None);
        assert_eq!(known.verdict("/l", t(5)), None);
    }

    #[test]
    fn lock_keys_are_the_direct_children_of_the_name() {
        assert!(is_lock_key("/a/", b"/a/694d7f"));
        assert!(!is_lock_key("/a/", b"/a/b/694d7f"));
        assert!(!is_lock_key("/a/", b"/a/"));
        assert!(!is_lock_key("/a/", b"/ab/1"));
    }
}
