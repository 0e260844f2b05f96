//! The fencing token: the one number that orders lock holders.
//!
//! A token is the lock key's create_revision in the lock service. Revisions start at 1 and
//! only grow, so a token is always in `1..=i64::MAX` (etcd stores revisions as int64, and the
//! seed's JSON protocol carries them as int64 too). Zero is reserved on the wire for "no
//! token", which is why it is not a valid `FencingToken`.

use std::fmt;
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

/// A fencing token: strictly increasing from one lock holder to the next of the same lock name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct FencingToken(NonZeroU64);

/// The largest token the wire formats can carry (etcd revisions are int64).
pub const MAX_TOKEN: u64 = i64::MAX as u64;

impl FencingToken {
    /// A token from its number; `None` for 0 (the wire's "no token") and for values past
    /// `i64::MAX`, which no revision can reach.
    pub fn new(value: u64) -> Option<Self> {
        if value > MAX_TOKEN {
            return None;
        }
        NonZeroU64::new(value).map(Self)
    }

    /// The token's number, as sent on the wire.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<FencingToken> for u64 {
    fn from(token: FencingToken) -> u64 {
        token.get()
    }
}

/// The error for a number that cannot be a fencing token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a fencing token must be between 1 and {MAX_TOKEN}, got {0}")]
pub struct InvalidToken(pub u64);

impl TryFrom<u64> for FencingToken {
    type Error = InvalidToken;

    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::new(value).ok_or(InvalidToken(value))
    }
}

impl std::str::FromStr for FencingToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("a fencing token must be a positive integer, got {s:?}"))?;
        Self::try_from(value).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_out_of_range_values_are_not_tokens() {
        assert_eq!(FencingToken::new(0), None);
        assert_eq!(FencingToken::new(MAX_TOKEN + 1), None);
        assert_eq!(
            FencingToken::new(MAX_TOKEN).map(FencingToken::get),
            Some(MAX_TOKEN)
        );
    }

    #[test]
    fn tokens_order_by_value() {
        let a = FencingToken::new(5).unwrap();
        let b = FencingToken::new(6).unwrap();
        assert!(a < b);
        assert_eq!("6".parse::<FencingToken>(), Ok(b));
        assert!("0".parse::<FencingToken>().is_err());
        assert!("-1".parse::<FencingToken>().is_err());
    }

    #[test]
    fn tokens_serialize_as_plain_integers() {
        let t = FencingToken::new(42).unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "42");
        assert_eq!(serde_json::from_str::<FencingToken>("42").unwrap(), t);
        assert!(serde_json::from_str::<FencingToken>("0").is_err());
    }
}
