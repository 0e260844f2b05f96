//! What lockd keeps on disk: its identity and the revision high-water mark.
//!
//! Keys and leases live in memory only. The one promise that must outlive the process is that
//! the revision never goes back, since lock tokens are revisions. Before handing out revision
//! `r`, lockd makes sure a reservation of at least `r` is durable in `lockd.json`; after a
//! restart it continues above the reservation. Reserving a block at a time keeps the fsync off
//! the path of almost every write; a crash only skips the unused part of the block.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Revisions reserved per fsync.
pub const RESERVATION_BLOCK: i64 = 10_000;

const META_FILE: &str = "lockd.json";
const LOCK_FILE: &str = "lockd.lock";

/// The identity a member reports in every response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Random and nonzero, chosen when the data directory is created.
    pub cluster_id: u64,
    /// Random and nonzero, chosen when the data directory is created.
    pub member_id: u64,
    /// Starts of this data directory so far; reported as the raft term, so a restart is
    /// visible the way a new leader term is in etcd.
    pub term: u64,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    #[serde(flatten)]
    identity: Identity,
    /// Every revision handed out so far is at most this.
    reserved_revision: i64,
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Creating, opening, locking or writing in the directory failed; the cause is the
    /// source, not in the message.
    #[error("cannot use data dir {dir}")]
    Io {
        /// The data directory.
        dir: PathBuf,
        /// What the operating system answered.
        #[source]
        source: io::Error,
    },
    /// Another process holds the directory's lock file.
    #[error("data dir {dir} is in use by another lockd")]
    InUse {
        /// The data directory.
        dir: PathBuf,
    },
    /// The state file cannot be parsed or holds an impossible value.
    #[error("{path} is not a lockd state file: {reason}")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The revision reservations: durable under a data directory, or in memory only.
pub struct Revisions {
    dir: Option<PathBuf>,
    identity: Identity,
    reserved: i64,
    /// Why the last reservation failed, until one succeeds: while it is set, every write
    /// is refused (each one tries again), so lockd reports itself unhealthy.
    failure: Option<String>,
    /// Held open for its exclusive `flock`, released when lockd exits (also on `kill -9`).
    _lock: Option<File>,
}

impl Revisions {
    /// Fresh identity, revisions from 1, nothing on disk.
    pub fn in_memory() -> (Self, i64) {
        let identity = Identity {
            cluster_id: nonzero_random(),
            member_id: nonzero_random(),
            term: 1,
        };
        let revisions = Self {
            dir: None,
            identity,
            reserved: i64::MAX,
            failure: None,
            _lock: None,
        };
        (revisions, 1)
    }

    /// Opens (creating if needed) `dir` and returns the reservations and the revision to
    /// start from: 1 for a new directory, else the previous reservation, which is at least
    /// every revision handed out before. The start is itself reserved before returning.
    pub fn open(dir: &Path) -> Result<(Self, i64), MetaError> {
        let io_err = |source| MetaError::Io {
            dir: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io_err)?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(MetaError::InUse {
                    dir: dir.to_owned(),
                });
            }
            Err(err) => return Err(io_err(err.into())),
        }
        let path = dir.join(META_FILE);
        let (identity, start) = match fs::read(&path) {
            Ok(bytes) => {
                let disk: OnDisk =
                    serde_json::from_slice(&bytes).map_err(|e| MetaError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if disk.reserved_revision < 1 {
                    return Err(MetaError::Corrupt {
                        path,
                        reason: format!("reserved revision {}", disk.reserved_revision),
                    });
                }
                let identity = Identity {
                    term: disk.identity.term + 1,
                    ..disk.identity
                };
                (identity, disk.reserved_revision)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let identity = Identity {
                    cluster_id: nonzero_random(),
                    member_id: nonzero_random(),
                    term: 1,
                };
                (identity, 1)
            }
            Err(e) => return Err(io_err(e)),
        };
        let mut revisions = Self {
            dir: Some(dir.to_owned()),
            identity,
            reserved: start,
            failure: None,
            _lock: Some(lock),
        };
        revisions
            .reserve(start + RESERVATION_BLOCK)
            .map_err(io_err)?;
        Ok((revisions, start))
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// Makes sure `revision` may be handed out: durable before this returns `Ok`.
    pub fn ensure(&mut self, revision: i64) -> io::Result<()> {
        if revision <= self.reserved {
            return Ok(());
        }
        let reserved = self.reserve(revision + RESERVATION_BLOCK);
        self.failure = reserved.as_ref().err().map(|e| e.to_string());
        reserved
    }

    /// Why revisions cannot be reserved now (the last attempt failed), if they cannot.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    fn reserve(&mut self, up_to: i64) -> io::Result<()> {
        if let Some(dir) = &self.dir {
            let disk = OnDisk {
                identity: self.identity,
                reserved_revision: up_to,
            };
            let tmp = dir.join(format!("{META_FILE}.tmp"));
            let mut file = File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(&disk).map_err(io::Error::other)?)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, dir.join(META_FILE))?;
            File::open(dir)?.sync_all()?;
        }
        self.reserved = up_to;
        Ok(())
    }
}

/// A random ID; 0 means "none" in etcd's protocol.
fn nonzero_random() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_continues_above_every_revision_reserved_and_keeps_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, start) = Revisions::open(dir.path()).unwrap();
        assert_eq!(start, 1);
        first.ensure(RESERVATION_BLOCK + 5).unwrap();
        let identity = first.identity();
        drop(first);

        let (second, start) = Revisions::open(dir.path()).unwrap();
        assert!(start >= RESERVATION_BLOCK + 5, "restarted at {start}");
        assert_eq!(second.identity().member_id, identity.member_id);
        assert_eq!(second.identity().cluster_id, identity.cluster_id);
        assert_eq!(second.identity().term, identity.term + 1);
    }

    #[test]
    fn a_second_lockd_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Revisions::open(dir.path()).unwrap();
        let err = Revisions::open(dir.path()).err().expect("refused");
        assert!(matches!(err, MetaError::InUse { .. }), "{err}");
    }

    #[test]
    fn a_damaged_state_file_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(META_FILE), b"{ not json").unwrap();
        let err = Revisions::open(dir.path()).err().expect("refused");
        assert!(matches!(err, MetaError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read(dir.path().join(META_FILE)).unwrap(), b"{ not json");
    }
}
