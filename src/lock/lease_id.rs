//! `LeaseId`: the lock service's name for a lease.
//!
//! Printed in lower-case hex without leading zeros, as etcd and `etcdctl` print it, so the
//! lock key `<lock name>/<lease id>` matches etcd's own lock keys. A lease ID is an identity,
//! never an order: IDs carry the granting member's ID in their high bits, so a lease granted
//! later through another member can be numerically lower. Fencing tokens come from revisions.

use std::fmt;

/// An etcd lease ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(i64);

impl LeaseId {
    /// Wraps the ID from the wire.
    pub fn new(id: i64) -> Self {
        Self(id)
    }

    /// The ID as sent on the wire.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({self})")
    }
}

impl std::str::FromStr for LeaseId {
    type Err = std::num::ParseIntError;

    /// Parses the hex form printed by etcd and by `Display`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        i64::from_str_radix(s.trim(), 16).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_print_as_etcd_hex_and_parse_back() {
        let id = LeaseId::new(0x694d_7a1b_2c3d_4e5f);
        assert_eq!(id.to_string(), "694d7a1b2c3d4e5f");
        assert_eq!("694d7a1b2c3d4e5f".parse::<LeaseId>(), Ok(id));
        assert_eq!(LeaseId::new(0x1f).to_string(), "1f");
    }
}
