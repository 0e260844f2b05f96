//! The synced baseline's log: a fixed record per request appended to a file and synced in
//! groups, the least that any server answering only after a sync has to do.
//!
//! It has the storage's group commit without its store: requests join the open group while
//! the group before it is written and synced on a thread of its own, and hear when theirs
//! is. A storage figure over this one's is the share of the disk's ceiling that the storage
//! keeps, at as many connections.
//!
//! Invariants: a request is told its group is synced only after an `fdatasync` that followed
//! the write of the group's records; at most one group is written at a time; the file is
//! sized up front, as the storage engine's journal is, so a sync never also writes a new
//! file size.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::watch;

/// Bytes each request appends: about what the storage's engine appends for a one-key write
/// (the key, its binding, the value and its token, and the journal's framing).
pub const RECORD_BYTES: usize = 64;

/// The log file's size, set when it is created; writes wrap around at its end. The size of
/// the storage engine's journal.
const LOG_BYTES: u64 = 64 << 20;

/// Whether a group was synced: `None` until it is decided.
type Synced = watch::Receiver<Option<bool>>;

/// The log and the thread that syncs its groups; the thread stops when this is dropped.
pub struct GroupSync {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the sync thread when a request joins while it is idle, or when the log closes.
    work: Condvar,
}

struct State {
    /// Requests in the open group.
    open: usize,
    /// Tells the open group's requests how their sync went.
    done: watch::Sender<Option<bool>>,
    /// Whether the sync thread waits for a request to wake it.
    idle: bool,
    closing: bool,
}

impl GroupSync {
    /// Creates the log file in `dir`, sized up front, and starts the sync thread.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join("baseline.log"))?;
        file.set_len(LOG_BYTES)?;
        file.sync_all()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                open: 0,
                done: watch::channel(None).0,
                idle: false,
                closing: false,
            }),
            work: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("fencelock-sync".into())
                .spawn(move || shared.sync_groups(&file))?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Appends a record and waits until it is synced; false when the write or sync failed.
    pub async fn append(&self) -> bool {
        let mut synced = self.shared.join();
        matches!(
            synced.wait_for(Option::is_some).await.as_deref(),
            Ok(Some(true))
        )
    }
}

impl Drop for GroupSync {
    fn drop(&mut self) {
        self.shared.state().closing = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// Nothing that holds the lock can panic (counters and a channel swap), so a poisoned
    /// lock still guards a whole state.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the open group, waking the sync thread if it is idle.
    fn join(&self) -> Synced {
        let mut state = self.state();
        state.open += 1;
        let synced = state.done.subscribe();
        let wake = std::mem::take(&mut state.idle);
        drop(state);
        if wake {
            self.work.notify_one();
        }
        synced
    }

    /// The sync thread: writes and syncs the open group whenever it has requests, until the
    /// log closes.
    fn sync_groups(&self, file: &File) {
        let records = vec![0x5a_u8; RECORD_BYTES * 1024];
        let mut offset = 0_u64;
        let mut state = self.state();
        loop {
            if state.open == 0 {
                if state.closing {
                    return;
                }
                state.idle = true;
                state = self
                    .work
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            let requests = std::mem::take(&mut state.open);
            let done = std::mem::replace(&mut state.done, watch::channel(None).0);
            drop(state);

            let mut ok = true;
            let mut left = requests * RECORD_BYTES;
            while ok && left > 0 {
                let chunk = left.min(records.len());
                if offset + chunk as u64 > LOG_BYTES {
                    offset = 0;
                }
                ok = file.write_all_at(&records[..chunk], offset).is_ok();
                offset += chunk as u64;
                left -= chunk;
            }
            ok = ok && file.sync_data().is_ok();
            done.send_replace(Some(ok));
            state = self.state();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request of many concurrent ones hears that its record is synced, and the file
    /// keeps the size it was given.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_synced() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(GroupSync::create(dir.path()).unwrap());
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move { log.append().await })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap());
        }
        drop(log);
        let size = std::fs::metadata(dir.path().join("baseline.log"))
            .unwrap()
            .len();
        assert_eq!(size, LOG_BYTES);
    }
}
