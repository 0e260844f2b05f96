//! The fence rule: whether a request carrying a fencing token may proceed, and how it moves
//! the fence.
//!
//! This is the one place the rule lives. The store calls [`check`] for every request; the
//! checker and the tests reason about it through the same function. The rule is pure: it sees
//! the policy, the kind of access, the presented token and the fence's current token, and
//! nothing else, so the store can make it atomic with the effect simply by calling it
//! under the store's one lock.
//!
//! Invariants under [`Policy::Strict`] and [`Policy::Writes`]:
//! - a fence never goes down: an accepted request leaves it at `max(current, presented)`;
//! - a request whose token is below the fence is rejected, equal is accepted (the same holder
//!   again), above is accepted and raises the fence;
//! - each key belongs to one fence ([`Binding`]): the first checked access binds the key to
//!   the fence it names (a lock name, or the key's own fence when it names none), and a
//!   checked access naming any other fence is refused ([`bind`]). Otherwise a stale holder
//!   would simply name another fence, or none, and its write would go through.
//!
//! A key's own fence lives in a namespace of its own: the key `/lock`'s own fence is not the
//! fence of the lock `/lock`.

use std::fmt;
use std::str::FromStr;

use crate::FencingToken;

/// Which requests the storage checks against the fence (`--fencing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Policy {
    /// Reads and writes that carry a token are checked and raise the fence; writes must carry
    /// one. The only policy that also stops the lost update of a read-modify-write.
    #[default]
    Strict,
    /// Only writes are checked and raise the fence; reads are plain reads.
    Writes,
    /// The seed's check: a write must present exactly the token of the fence's last write.
    Seed,
    /// Nothing is checked.
    Off,
}

impl Policy {
    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Strict => "strict",
            Policy::Writes => "writes",
            Policy::Seed => "seed",
            Policy::Off => "off",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Policy::Strict),
            "writes" => Ok(Policy::Writes),
            "seed" => Ok(Policy::Seed),
            "off" => Ok(Policy::Off),
            other => Err(format!(
                "unknown fencing policy {other:?} (expected strict, writes, seed or off)"
            )),
        }
    }
}

/// What a request does to the guarded data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The request reads the data.
    Read,
    /// The request changes the data.
    Write,
}

/// The fence a key belongs to, or a request names for its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// The fence of a lock name: one lock guards every key bound to it.
    Lock(String),
    /// The key's own fence, as in the seed: the request named no fence.
    OwnKey,
}

impl Binding {
    /// The binding a request asks for: `Some(lock name)` or none, the key's own fence.
    pub fn of(fence: Option<&str>) -> Self {
        match fence {
            Some(name) => Binding::Lock(name.to_owned()),
            None => Binding::OwnKey,
        }
    }

    /// The lock name, `None` for the key's own fence.
    pub fn lock_name(&self) -> Option<&str> {
        match self {
            Binding::Lock(name) => Some(name),
            Binding::OwnKey => None,
        }
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Binding::Lock(name) => write!(f, "fence {name:?}"),
            Binding::OwnKey => f.write_str("its own fence"),
        }
    }
}

/// An accepted request, and the token the fence must hold afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// `Some(token)` when the fence moves to `token` (it was absent or lower); `None` when it
    /// stays as it is.
    pub raise_to: Option<FencingToken>,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The presented token is behind the fence: a newer holder of the lock has been seen.
    /// Under [`Policy::Seed`] "behind" means "different".
    #[error("stale fencing token for fence {fence:?}: presented {}, current {current}", show(*.presented))]
    Stale {
        /// The fence that refused the token.
        fence: String,
        /// `None` when the request carried no token (only possible under [`Policy::Seed`]).
        presented: Option<FencingToken>,
        /// The newest token the fence has seen.
        current: FencingToken,
    },
    /// A write without a token, under a policy that checks writes.
    #[error("a write must carry a fencing token (fence {fence:?})")]
    MissingToken {
        /// The fence the write falls under.
        fence: String,
    },
    /// The key belongs to another fence than the one the request names.
    #[error("key {key:?} belongs to {bound}, not to {requested}")]
    WrongFence {
        /// The key of the request.
        key: String,
        /// The fence the key belongs to.
        bound: Binding,
        /// The fence the request named.
        requested: Binding,
    },
}

/// Whether `policy` checks an `access` presenting `presented` against its fence at all. An
/// access that is not checked neither moves a fence nor binds its key.
pub fn is_checked(policy: Policy, access: Access, presented: Option<FencingToken>) -> bool {
    match (policy, access) {
        (Policy::Off, _) => false,
        (Policy::Strict, Access::Read) => presented.is_some(),
        (Policy::Writes | Policy::Seed, Access::Read) => false,
        (Policy::Strict | Policy::Writes | Policy::Seed, Access::Write) => true,
    }
}

/// The binding rule for a checked access to `key`: `bound` is the key's fence (`None` while
/// no checked access has touched it), `requested` the fence the request names. Returns the
/// binding to record, if the key was unbound, or refuses a request for another fence.
pub fn bind(
    key: &str,
    bound: Option<&Binding>,
    requested: &Binding,
) -> Result<Option<Binding>, Rejection> {
    match bound {
        None => Ok(Some(requested.clone())),
        Some(bound) if bound == requested => Ok(None),
        Some(bound) => Err(Rejection::WrongFence {
            key: key.to_owned(),
            bound: bound.clone(),
            requested: requested.clone(),
        }),
    }
}

fn show(token: Option<FencingToken>) -> u64 {
    token.map_or(0, FencingToken::get)
}

/// The fence rule. `fence` names the fence (only used to name it in a rejection), `presented`
/// is the request's token (`None` for the wire's 0 or absent), `current` the fence's token
/// (`None` when no token has been seen for this fence).
pub fn check(
    policy: Policy,
    access: Access,
    fence: &str,
    presented: Option<FencingToken>,
    current: Option<FencingToken>,
) -> Result<Accepted, Rejection> {
    if !is_checked(policy, access, presented) {
        return Ok(Accepted { raise_to: None });
    }
    if policy == Policy::Seed {
        return seed_rule(fence, presented, current);
    }
    let Some(presented) = presented else {
        return Err(Rejection::MissingToken {
            fence: fence.to_owned(),
        });
    };
    match current {
        Some(current) if presented < current => Err(Rejection::Stale {
            fence: fence.to_owned(),
            presented: Some(presented),
            current,
        }),
        Some(current) if presented == current => Ok(Accepted { raise_to: None }),
        _ => Ok(Accepted {
            raise_to: Some(presented),
        }),
    }
}

/// The seed's equality check: the first write sets the fence, later writes must present the
/// same token. It rejects a newer holder just like an older one, which is why it only works
/// for the seed's single scripted run. A write without a token on a fresh fence is accepted
/// and leaves no fence behind.
fn seed_rule(
    fence: &str,
    presented: Option<FencingToken>,
    current: Option<FencingToken>,
) -> Result<Accepted, Rejection> {
    match current {
        None => Ok(Accepted {
            raise_to: presented,
        }),
        Some(current) if presented == Some(current) => Ok(Accepted { raise_to: None }),
        Some(current) => Err(Rejection::Stale {
            fence: fence.to_owned(),
            presented,
            current,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> Option<FencingToken> {
        Some(FencingToken::new(n).unwrap())
    }

    fn raise(n: u64) -> Result<Accepted, Rejection> {
        Ok(Accepted { raise_to: t(n) })
    }

    const KEEP: Result<Accepted, Rejection> = Ok(Accepted { raise_to: None });

    fn stale(presented: Option<FencingToken>, current: u64) -> Result<Accepted, Rejection> {
        Err(Rejection::Stale {
            fence: "f".into(),
            presented,
            current: t(current).unwrap(),
        })
    }

    #[test]
    fn strict_write_below_fence_is_rejected_equal_kept_above_raises() {
        use Access::Write;
        assert_eq!(
            check(Policy::Strict, Write, "f", t(4), t(5)),
            stale(t(4), 5)
        );
        assert_eq!(check(Policy::Strict, Write, "f", t(5), t(5)), KEEP);
        assert_eq!(check(Policy::Strict, Write, "f", t(6), t(5)), raise(6));
        assert_eq!(check(Policy::Strict, Write, "f", t(1), None), raise(1));
    }

    #[test]
    fn strict_read_with_token_is_checked_and_raises_the_fence() {
        use Access::Read;
        assert_eq!(check(Policy::Strict, Read, "f", t(4), t(5)), stale(t(4), 5));
        assert_eq!(check(Policy::Strict, Read, "f", t(5), t(5)), KEEP);
        assert_eq!(check(Policy::Strict, Read, "f", t(6), t(5)), raise(6));
    }

    #[test]
    fn strict_read_without_token_is_a_plain_read() {
        assert_eq!(check(Policy::Strict, Access::Read, "f", None, t(5)), KEEP);
    }

    #[test]
    fn checked_write_without_token_is_rejected() {
        for policy in [Policy::Strict, Policy::Writes] {
            assert_eq!(
                check(policy, Access::Write, "f", None, t(5)),
                Err(Rejection::MissingToken { fence: "f".into() })
            );
        }
    }

    #[test]
    fn writes_policy_checks_writes_and_ignores_read_tokens() {
        assert_eq!(
            check(Policy::Writes, Access::Write, "f", t(4), t(5)),
            stale(t(4), 5)
        );
        assert_eq!(
            check(Policy::Writes, Access::Write, "f", t(6), t(5)),
            raise(6)
        );
        assert_eq!(check(Policy::Writes, Access::Read, "f", t(4), t(5)), KEEP);
        assert_eq!(check(Policy::Writes, Access::Read, "f", t(9), t(5)), KEEP);
    }

    #[test]
    fn seed_policy_wants_the_same_token_as_the_last_write() {
        use Access::Write;
        assert_eq!(check(Policy::Seed, Write, "f", t(7), None), raise(7));
        assert_eq!(check(Policy::Seed, Write, "f", t(7), t(7)), KEEP);
        // A newer holder is rejected just like an older one: the seed's flaw.
        assert_eq!(check(Policy::Seed, Write, "f", t(8), t(7)), stale(t(8), 7));
        assert_eq!(check(Policy::Seed, Write, "f", t(6), t(7)), stale(t(6), 7));
        assert_eq!(check(Policy::Seed, Write, "f", None, t(7)), stale(None, 7));
        assert_eq!(check(Policy::Seed, Access::Read, "f", t(1), t(7)), KEEP);
    }

    #[test]
    fn off_policy_accepts_everything_and_moves_nothing() {
        for access in [Access::Read, Access::Write] {
            for presented in [None, t(1), t(9)] {
                assert_eq!(check(Policy::Off, access, "f", presented, t(5)), KEEP);
            }
        }
    }

    #[test]
    fn checked_policies_never_lower_the_fence() {
        for policy in [Policy::Strict, Policy::Writes, Policy::Seed] {
            for access in [Access::Read, Access::Write] {
                for current in [None, t(1), t(5), t(u64::MAX >> 1)] {
                    for presented in [None, t(1), t(4), t(5), t(6), t(u64::MAX >> 1)] {
                        if let Ok(Accepted {
                            raise_to: Some(new),
                        }) = check(policy, access, "f", presented, current)
                        {
                            assert!(current.is_none_or(|c| new > c), "{policy} lowered");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rejection_names_fence_presented_and_current() {
        let err = check(Policy::Strict, Access::Write, "/lock", t(4), t(5)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "stale fencing token for fence \"/lock\": presented 4, current 5"
        );
    }

    #[test]
    fn the_first_fence_named_binds_the_key_and_others_are_refused() {
        let lock = Binding::of(Some("/lock"));
        assert_eq!(bind("k", None, &lock), Ok(Some(lock.clone())));
        assert_eq!(bind("k", Some(&lock), &lock), Ok(None));
        for other in [Binding::of(Some("/other")), Binding::OwnKey] {
            assert_eq!(
                bind("k", Some(&lock), &other),
                Err(Rejection::WrongFence {
                    key: "k".into(),
                    bound: lock.clone(),
                    requested: other.clone(),
                })
            );
        }
        let own = Binding::OwnKey;
        assert_eq!(bind("k", None, &own), Ok(Some(Binding::OwnKey)));
        assert!(bind("k", Some(&own), &lock).is_err());
        assert_eq!(
            bind("k", Some(&lock), &own).unwrap_err().to_string(),
            "key \"k\" belongs to fence \"/lock\", not to its own fence"
        );
    }

    #[test]
    fn only_checked_accesses_bind() {
        assert!(!is_checked(Policy::Off, Access::Write, t(1)));
        assert!(!is_checked(Policy::Strict, Access::Read, None));
        assert!(is_checked(Policy::Strict, Access::Read, t(1)));
        assert!(!is_checked(Policy::Writes, Access::Read, t(1)));
        assert!(is_checked(Policy::Seed, Access::Write, None));
    }

    #[test]
    fn policies_parse_from_their_names() {
        for policy in [Policy::Strict, Policy::Writes, Policy::Seed, Policy::Off] {
            assert_eq!(policy.as_str().parse::<Policy>(), Ok(policy));
        }
        assert!("lax".parse::<Policy>().is_err());
    }
}
