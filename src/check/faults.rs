//! Fault injection: one fault every interval, drawn from the seeded generator, each
//! recorded as a begin/end pair in the fault log.
//!
//! Invariants: every fault it starts it also undoes (what it froze it continues, what it
//! killed it restarts, what it cut it heals) before the run stops; the schedule depends only
//! on the seed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng as _;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use tokio::sync::{broadcast, watch};
use tokio::time::sleep;

use super::history::{
    Event, EventType, FaultEvent, FaultKind, KeyChange, KeyEvent, Log, OpKind, Target, mono_ns,
    wall_ms,
};
use super::run::{
    CheckError, LockService, NEXT_TURN_SLACK, Options, STANDING_FAULTS, clock_rate, hosts, setup,
};
use super::workers::{Tracker, Worker, locked, signal};
use fencelock::lock::{Client, LeaseId};
use fencelock::process::{PostgresServer, ServerProcess, Signal, TestNet};

/// How long past the TTL an isolated holder stays cut off: its lease, renewed at most a
/// third of the TTL before the cut, has then run out on lockd, which looks for expired
/// leases far more often than once a second.
const ISOLATION_PAST_TTL: Duration = Duration::from_secs(1);

/// How long past the TTL an etcd partition lasts: long enough for the majority to elect a
/// leader (an election timeout and a few rounds) and for leases to run out.
const PARTITION_PAST_TTL: Duration = Duration::from_secs(2);

/// Injects one fault every interval until the run stops.
pub(crate) struct Injector<'a> {
    pub(crate) options: &'a Options,
    pub(crate) faults: &'a [FaultKind],
    pub(crate) rng: rand::rngs::StdRng,
    pub(crate) tracker: Arc<Mutex<Tracker>>,
    pub(crate) workers: &'a [Worker],
    /// The storage, with `--resource storage`.
    pub(crate) storage: Option<&'a mut ServerProcess>,
    /// The PostgreSQL server, when the checker started it.
    pub(crate) postgres: Option<&'a mut PostgresServer>,
    pub(crate) lock_service: &'a mut LockService,
    /// The test network every process runs in, with network faults.
    pub(crate) net: Option<&'a TestNet>,
    pub(crate) client: &'a Client,
    pub(crate) keys: broadcast::Sender<KeyEvent>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) log: &'a mut Log,
    pub(crate) next_id: u64,
    pub(crate) stop: watch::Receiver<bool>,
}

/// A wait cut short by the end of the run.
pub(crate) struct Stopped;

impl Injector<'_> {
    /// Runs the schedule until the run stops; the standing faults (skewed clocks) are
    /// recorded as spans over the whole of it.
    pub(crate) async fn run(&mut self) -> Result<(), CheckError> {
        let standing: Vec<(FaultEvent, String)> = (1..=self.workers.len() as u32)
            .filter_map(|id| clock_rate(self.faults, id).map(|rate| (id, rate)))
            .map(|(id, rate)| {
                let event = self.start(FaultKind::ClockSkew, Target::Worker(id), None);
                (event, format!("clocks at {rate}x real time (libfaketime)"))
            })
            .collect();
        let result = self.scheduled().await;
        for (event, note) in standing {
            self.end(event, Some(note));
        }
        result
    }

    /// One fault every interval, drawn from the faults that come and go.
    async fn scheduled(&mut self) -> Result<(), CheckError> {
        let faults: Vec<FaultKind> = (self.faults.iter())
            .filter(|f| !STANDING_FAULTS.contains(f))
            .copied()
            .collect();
        if faults.is_empty() {
            // Nothing to draw; the standing faults still last until the run stops.
            let mut stop = self.stop.clone();
            let _ = stop.wait_for(|s| *s).await;
            return Ok(());
        }
        loop {
            if self.pause(self.options.interval).await.is_err() {
                return Ok(());
            }
            let fault = *faults.choose(&mut self.rng).expect("faults is not empty");
            let result = match fault {
                FaultKind::FreezeHolder => self.freeze_holder().await,
                FaultKind::FreezeAfterRead => self.freeze_after_read().await,
                FaultKind::Revoke => self.revoke().await,
                FaultKind::FreezeLockService => self.freeze_lock_service().await,
                FaultKind::KillStorage => self.kill_storage().await?,
                FaultKind::KillMember => self.kill_member().await?,
                FaultKind::KillPostgres => self.kill_postgres().await?,
                FaultKind::IsolateHolder => self.isolate_holder().await?,
                FaultKind::IsolateStorage => self.isolate_storage().await?,
                FaultKind::PartitionLeader => self.partition_leader().await?,
                FaultKind::PartitionHalves => self.partition_halves().await?,
                // Standing, never drawn.
                FaultKind::ClockSkew => Ok(()),
            };
            if result.is_err() {
                return Ok(());
            }
        }
    }

    /// Sleeps, unless the run stops first.
    async fn pause(&mut self, duration: Duration) -> Result<(), Stopped> {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = sleep(duration) => Ok(()),
            _ = stop.wait_for(|s| *s) => Err(Stopped),
        }
    }

    /// Waits for `what` with a time limit; `Ok(None)` when the limit passed first.
    async fn within<T>(
        &self,
        limit: Duration,
        what: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>, Stopped> {
        let mut stop = self.stop.clone();
        tokio::select! {
            value = what => Ok(Some(value)),
            () = sleep(limit) => Ok(None),
            _ = stop.wait_for(|s| *s) => Err(Stopped),
        }
    }

    /// Longest a worker stays frozen: past its TTL, whatever else happens.
    fn max_freeze(&self) -> Duration {
        self.options.ttl * 3 + Duration::from_secs(2)
    }

    fn start(&mut self, fault: FaultKind, target: Target, lease: Option<i64>) -> FaultEvent {
        self.next_id += 1;
        locked(&self.tracker).faults += 1;
        let event = FaultEvent {
            id: self.next_id,
            fault,
            target,
            start_mono_ns: mono_ns(),
            end_mono_ns: None,
            wall_ms: wall_ms(),
            lease,
            note: None,
        };
        let _ = self.log.append(&event);
        event
    }

    fn end(&mut self, mut event: FaultEvent, note: Option<String>) {
        event.end_mono_ns = Some(mono_ns());
        event.wall_ms = wall_ms();
        event.note = note;
        let _ = self.log.append(&event);
    }

    fn freeze(&self, worker: usize, frozen: bool) {
        if let Some(pid) = self.workers[worker].child.id() {
            let sig = if frozen { Signal::STOP } else { Signal::CONT };
            if signal(pid, sig) {
                locked(&self.tracker).workers[worker].frozen = frozen;
            }
        }
    }

    pub(crate) fn thaw_all(&self) {
        for i in 0..self.workers.len() {
            self.freeze(i, false);
        }
        self.thaw_lock_service(None);
    }

    /// Continues lockd, or etcd member `member` (every member when `None`).
    fn thaw_lock_service(&self, member: Option<usize>) {
        match &*self.lock_service {
            LockService::Lockd(lockd) => {
                lockd.signal(Signal::CONT);
            }
            LockService::Etcd(cluster) => match member {
                Some(member) => cluster.resume(member),
                None => (0..cluster.len()).for_each(|i| cluster.resume(i)),
            },
            LockService::External(_) => {}
        }
    }

    /// Workers holding the lock now, with their lease and token.
    fn holders(&self) -> Vec<(usize, Option<i64>, u64)> {
        let tracker = locked(&self.tracker);
        tracker
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.holding.map(|t| (i, w.lease, t)))
            .collect()
    }

    /// Waits until some worker holds the lock; `None` if none does within an interval.
    async fn some_holder(&mut self) -> Result<Option<(usize, Option<i64>, u64)>, Stopped> {
        let events = self.events.subscribe();
        if let Some(holder) = self.holders().first() {
            return Ok(Some(*holder));
        }
        let tracker = self.tracker.clone();
        let acquired = first_match(events, move |e| {
            (e.f == OpKind::Lock && e.kind == EventType::Ok).then(|| {
                let i = (e.worker - 1) as usize;
                let lease = locked(&tracker).workers[i].lease;
                (i, lease, e.token.unwrap_or(0))
            })
        });
        self.within(self.options.interval, acquired).await
    }

    /// Keeps a frozen worker stopped until its lock key is seen gone (its lease expired on
    /// the lock service) and another worker has gone on to `then` (acquired, or read), within
    /// `max_freeze` in all. The note, and the worker (numbered from 1) that went on, if one
    /// did.
    async fn hold_frozen(
        &mut self,
        lease: Option<i64>,
        token: u64,
        then: (OpKind, &'static str),
    ) -> Result<(String, Option<u32>), Stopped> {
        let began = Instant::now();
        let keys = self.keys.subscribe();
        // Subscribed now, so that the next holder's event is kept while the key is awaited.
        let events = self.events.subscribe();
        let deleted = first_match(keys, |k| {
            (k.change == KeyChange::Deleted && k.lease == lease).then_some(())
        });
        let expired = self.within(self.max_freeze(), deleted).await?.is_some();
        if !expired {
            let note = "lock key not seen expiring; resumed at the time limit";
            return Ok((note.into(), None));
        }
        let left = self.max_freeze().saturating_sub(began.elapsed());
        let (kind, what) = then;
        let went_on = first_match(events, move |e| {
            (e.f == kind && e.kind == EventType::Ok && e.token.is_some_and(|t| t > token))
                .then_some(e.worker)
        });
        let next = self.within(left, went_on).await?;
        Ok(match next {
            Some(worker) => (
                format!("lease expired; resumed after worker {worker} {what}"),
                Some(worker),
            ),
            None => (
                "lease expired; no other worker went on before the time limit".into(),
                None,
            ),
        })
    }

    async fn freeze_holder(&mut self) -> Result<(), Stopped> {
        let Some((worker, lease, token)) = self.some_holder().await? else {
            return Ok(());
        };
        self.freeze(worker, true);
        let event = self.start(
            FaultKind::FreezeHolder,
            Target::Worker(worker as u32 + 1),
            lease,
        );
        let mut outcome = self
            .hold_frozen(lease, token, (OpKind::Lock, "acquired"))
            .await
            .map(|(note, _)| note);
        // Resume somewhere in the next holder's turn (before its read, between its read and
        // its write, or after), so every interleaving of the stale holder comes up.
        if let Ok(note) = &mut outcome {
            let later = self
                .rng
                .random_range(Duration::ZERO..=self.options.work.1 + NEXT_TURN_SLACK);
            if self.pause(later).await.is_err() {
                outcome = Err(Stopped);
            } else {
                note.push_str(&format!(", {} ms later", later.as_millis()));
            }
        }
        self.freeze(worker, false);
        self.end(event, outcome.as_ref().ok().cloned());
        outcome.map(|_| ())
    }

    /// Freezes the first worker to complete a read, and resumes it once its lease has expired
    /// and the next holder has read too: the interleaving that defeats write-only fencing.
    /// The next holder is itself held, from the moment its read is seen until the stale
    /// holder's write has an answer, so the stale write always comes between the next
    /// holder's read and its write, however slowly the resumed process gets going.
    async fn freeze_after_read(&mut self) -> Result<(), Stopped> {
        let events = self.events.subscribe();
        let read = first_match(events, |e| {
            (e.f == OpKind::Read && e.kind == EventType::Ok).then_some(e)
        });
        let Some(read) = self.within(self.options.interval * 2, read).await? else {
            return Ok(());
        };
        let worker = (read.worker - 1) as usize;
        self.freeze(worker, true);
        let lease = locked(&self.tracker).workers[worker].lease;
        let event = self.start(
            FaultKind::FreezeAfterRead,
            Target::Worker(read.worker),
            lease,
        );
        let held = self
            .hold_frozen(lease, read.token.unwrap_or(0), (OpKind::Read, "read"))
            .await;
        let outcome = match held {
            Ok((note, Some(next))) => {
                let work_ends = self.work_ends(read.worker, read.mono_ns);
                self.stale_write_first(worker, next, work_ends, note).await
            }
            Ok((note, None)) => {
                self.freeze(worker, false);
                Ok(note)
            }
            Err(stopped) => Err(stopped),
        };
        self.freeze(worker, false);
        self.end(event, outcome.as_ref().ok().cloned());
        outcome.map(|_| ())
    }

    /// When, on the monotonic clock in nanoseconds, the work of worker `worker` (numbered
    /// from 1) after a read answered at `read_ns` is over at the latest: the longest work,
    /// counted from the read (as the worker counts it), stretched by a slow clock.
    fn work_ends(&self, worker: u32, read_ns: u64) -> u64 {
        let rate = clock_rate(self.faults, worker).unwrap_or(1.0);
        let longest = self.options.work.1.div_f64(rate.min(1.0));
        read_ns.saturating_add(longest.as_nanos() as u64)
    }

    /// Stops worker `next` (numbered from 1), continues the stale worker (index `stale`) and
    /// continues `next` once the stale worker's write has an answer, or, failing that, half
    /// a TTL after `work_ends` (when the stale worker's work is over at the latest, see
    /// [`Self::work_ends`]), so that `next` keeps its own lease. A worker writes as soon as
    /// its work is over, so the answer comes after the rest of that work and the write.
    async fn stale_write_first(
        &mut self,
        stale: usize,
        next: u32,
        work_ends: u64,
        mut note: String,
    ) -> Result<String, Stopped> {
        let next = (next - 1) as usize;
        self.freeze(next, true);
        let stale_worker = stale as u32 + 1;
        let events = self.events.subscribe();
        let answered = first_match(events, move |e| {
            (e.worker == stale_worker && e.f == OpKind::Write && e.kind != EventType::Invoke)
                .then_some(e.kind)
        });
        self.freeze(stale, false);
        let rest_of_work = Duration::from_nanos(work_ends.saturating_sub(mono_ns()));
        let answer = self
            .within(rest_of_work + self.options.ttl / 2, answered)
            .await;
        self.freeze(next, false);
        note.push_str(&match answer? {
            Some(kind) => format!(
                "; worker {} held until the stale write was {}",
                next + 1,
                match kind {
                    EventType::Ok => "accepted",
                    EventType::Fail => "refused",
                    _ => "left without an answer",
                }
            ),
            None => format!(
                "; worker {} held until half a TTL after the stale worker's work, the stale \
                 write unanswered",
                next + 1
            ),
        });
        Ok(note)
    }

    async fn revoke(&mut self) -> Result<(), Stopped> {
        let Some((worker, Some(lease), _)) = self.some_holder().await? else {
            return Ok(());
        };
        let event = self.start(
            FaultKind::Revoke,
            Target::Worker(worker as u32 + 1),
            Some(lease),
        );
        let client = self.client.clone();
        let result = self
            .within(Duration::from_secs(5), client.revoke(LeaseId::new(lease)))
            .await?;
        let note = match result {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(format!("revoke failed: {e}")),
            None => Some("revoke got no answer in 5 s".into()),
        };
        self.end(event, note);
        Ok(())
    }

    async fn freeze_lock_service(&mut self) -> Result<(), Stopped> {
        // Past the TTL, so that leases run out on the service's clock while it is stopped.
        let freeze = self.options.ttl + self.options.ttl / 2 + Duration::from_millis(500);
        let (member, note) = match &*self.lock_service {
            LockService::Lockd(lockd) => {
                lockd.signal(Signal::STOP);
                (None, "lockd")
            }
            LockService::Etcd(cluster) => {
                let member = self.rng.random_range(0..cluster.len());
                cluster.pause(member);
                (Some(member), "etcd member")
            }
            LockService::External(_) => return Ok(()),
        };
        let target = Target::LockService(member.map(|m| m as u32));
        let event = self.start(FaultKind::FreezeLockService, target, None);
        let waited = self.pause(freeze).await;
        self.thaw_lock_service(member);
        self.end(event, Some(format!("{note} stopped for {freeze:?}")));
        waited
    }

    async fn kill_storage(&mut self) -> Result<Result<(), Stopped>, CheckError> {
        if self.storage.is_none() {
            return Ok(Ok(()));
        }
        let event = self.start(FaultKind::KillStorage, Target::Storage, None);
        if let Some(storage) = self.storage.as_deref_mut() {
            storage.kill().await;
        }
        let down = Duration::from_millis(self.rng.random_range(0..500));
        // The storage comes back even when the run is ending: the final read needs it.
        let waited = self.pause(down).await;
        if let Some(storage) = self.storage.as_deref_mut() {
            storage
                .restart()
                .await
                .map_err(|e| setup("cannot restart the storage")(e.into()))?;
        }
        self.end(event, Some(format!("down for {down:?}")));
        Ok(waited)
    }

    /// Kills the postmaster and every backend at once (SIGKILL, as a crash would), and starts
    /// PostgreSQL again on the same data: crash recovery replays what reached the
    /// write-ahead log, so every acknowledged commit must still be there.
    async fn kill_postgres(&mut self) -> Result<Result<(), Stopped>, CheckError> {
        let Some(port) = self.postgres.as_deref().map(PostgresServer::port) else {
            return Ok(Ok(()));
        };
        let event = self.start(FaultKind::KillPostgres, Target::Postgres, None);
        if let Some(server) = self.postgres.as_deref_mut() {
            server.crash();
        }
        let down = Duration::from_millis(self.rng.random_range(0..500));
        // PostgreSQL comes back even when the run is ending: the final read needs it.
        let waited = self.pause(down).await;
        let began = Instant::now();
        if let Some(server) = self.postgres.as_deref_mut() {
            server
                .restart()
                .await
                .map_err(|e| setup("cannot restart PostgreSQL")(e.into()))?;
            // The workers know the old port only.
            if server.port() != port {
                return Err(setup("cannot restart PostgreSQL")(anyhow::anyhow!(
                    "port {port} was taken while it was down; it came back on {}",
                    server.port()
                )));
            }
        }
        let recovery = began.elapsed();
        self.end(
            event,
            Some(format!(
                "down for {down:?}, answering again {} ms after the restart",
                recovery.as_millis()
            )),
        );
        Ok(waited)
    }

    /// The hosts of the lock service's members (lockd's alone, or each etcd member's).
    fn member_hosts(&self) -> Vec<usize> {
        let members = match &*self.lock_service {
            LockService::Etcd(cluster) => cluster.len(),
            _ => 1,
        };
        let workers = self.workers.len();
        (0..members).map(|m| hosts::member(m, workers)).collect()
    }

    /// Keeps the cut made for `event` for the TTL and `past_ttl` more, then heals, also when
    /// the run is ending (the workers must reach the services to stop cleanly).
    async fn hold_cut(
        &mut self,
        net: &TestNet,
        event: FaultEvent,
        past_ttl: Duration,
        what: String,
    ) -> Result<Result<(), Stopped>, CheckError> {
        let began = Instant::now();
        let waited = self.pause(self.options.ttl + past_ttl).await;
        net.heal()
            .map_err(|e| setup("cannot heal the test network")(e.into()))?;
        let note = format!("{what} for {} ms", began.elapsed().as_millis());
        self.end(event, Some(note));
        Ok(waited)
    }

    /// Cuts the storage's host off from every other host for longer than the TTL: requests
    /// time out (unknown outcomes), leases run out meanwhile, and the holders that come
    /// back after the heal must still be fenced.
    async fn isolate_storage(&mut self) -> Result<Result<(), Stopped>, CheckError> {
        let Some(net) = self.net else {
            return Ok(Ok(()));
        };
        net.isolate(hosts::STORAGE)
            .map_err(|e| setup("cannot cut the storage off")(e.into()))?;
        let event = self.start(FaultKind::IsolateStorage, Target::Storage, None);
        self.hold_cut(
            net,
            event,
            ISOLATION_PAST_TTL,
            "cut off from every host".into(),
        )
        .await
    }

    /// The index of the etcd member that leads now, asked of each member in turn (from the
    /// checker's host); `None` when no member names a leader it can be matched to.
    async fn leader(&self) -> Option<usize> {
        let LockService::Etcd(cluster) = &*self.lock_service else {
            return None;
        };
        let options = fencelock::lock::ConnectOptions {
            timeout: Duration::from_secs(1),
            ..self.options.connect.clone()
        };
        let mut ids = Vec::new();
        let mut leader = None;
        for endpoint in cluster.endpoints() {
            let status = async {
                let client = Client::connect_with([endpoint], &options).await.ok()?;
                let status = client
                    .maintenance()
                    .status(fencelock::etcd::etcdserverpb::StatusRequest {})
                    .await
                    .ok()?
                    .into_inner();
                Some((status.header.map_or(0, |h| h.member_id), status.leader))
            };
            let (id, named) = tokio::time::timeout(Duration::from_secs(2), status)
                .await
                .ok()
                .flatten()
                .unwrap_or((0, 0));
            ids.push(id);
            if named != 0 {
                leader = Some(named);
            }
        }
        let leader = leader?;
        ids.iter().position(|&id| id == leader)
    }

    /// Cuts the etcd leader's host off from the other members, every worker and the checker,
    /// for longer than the TTL and an election: the majority elects a new leader and goes on;
    /// the old one, alone, steps down.
    async fn partition_leader(&mut self) -> Result<Result<(), Stopped>, CheckError> {
        let Some(net) = self.net else {
            return Ok(Ok(()));
        };
        let Some(leader) = self.leader().await else {
            let event = self.start(FaultKind::PartitionLeader, Target::LockService(None), None);
            self.end(event, Some("no member named a leader; nothing cut".into()));
            return Ok(Ok(()));
        };
        let members = self.member_hosts();
        let leader_host = members[leader];
        let others: Vec<usize> = (0..net.len()).filter(|&h| h != leader_host).collect();
        net.partition(&[leader_host], &others)
            .map_err(|e| setup("cannot cut the leader off")(e.into()))?;
        let event = self.start(
            FaultKind::PartitionLeader,
            Target::LockService(Some(leader as u32)),
            None,
        );
        let what = format!("leader, member {leader}, cut off from every other host");
        self.hold_cut(net, event, PARTITION_PAST_TTL, what).await
    }

    /// Splits the etcd members into a majority and a minority, drawn at random, and the
    /// workers between both sides (odd-numbered with the majority); the storage and the
    /// checker stay reachable from both.
    async fn partition_halves(&mut self) -> Result<Result<(), Stopped>, CheckError> {
        let Some(net) = self.net else {
            return Ok(Ok(()));
        };
        let member_hosts = self.member_hosts();
        let mut members: Vec<usize> = (0..member_hosts.len()).collect();
        members.shuffle(&mut self.rng);
        let majority_size = members.len() / 2 + 1;
        let (majority, minority) = members.split_at(majority_size);
        let (mut majority, mut minority) = (majority.to_vec(), minority.to_vec());
        majority.sort_unstable();
        minority.sort_unstable();
        let workers: Vec<usize> = (0..self.workers.len()).collect();
        let (with_majority, with_minority): (Vec<usize>, Vec<usize>) =
            workers.iter().partition(|&&w| w % 2 == 0);
        let side = |members: &[usize], workers: &[usize]| -> Vec<usize> {
            (members.iter().map(|&m| member_hosts[m]))
                .chain(workers.iter().map(|&w| hosts::worker(w)))
                .collect()
        };
        net.partition(
            &side(&majority, &with_majority),
            &side(&minority, &with_minority),
        )
        .map_err(|e| setup("cannot split the test network")(e.into()))?;
        let event = self.start(FaultKind::PartitionHalves, Target::LockService(None), None);
        let names = |prefix: &str, items: &[usize]| {
            let list: Vec<String> = items.iter().map(|i| (i + 1).to_string()).collect();
            format!("{prefix} {}", list.join(","))
        };
        let what = format!(
            "split: members {majority:?} with {} | members {minority:?} with {}",
            names("workers", &with_majority),
            names("workers", &with_minority),
        );
        self.hold_cut(net, event, PARTITION_PAST_TTL, what).await
    }

    /// Cuts the holder's host off from the lock service's, not from the storage's, for
    /// longer than the TTL, then heals: the holder's lease expires while it can still write,
    /// late.
    async fn isolate_holder(&mut self) -> Result<Result<(), Stopped>, CheckError> {
        let Some(net) = self.net else {
            return Ok(Ok(()));
        };
        let Some((worker, lease, _)) = (match self.some_holder().await {
            Ok(holder) => holder,
            Err(stopped) => return Ok(Err(stopped)),
        }) else {
            return Ok(Ok(()));
        };
        // nft takes milliseconds; blocking the run loop that long delays no deadline.
        net.partition(&[hosts::worker(worker)], &self.member_hosts())
            .map_err(|e| setup("cannot cut the holder off from the lock service")(e.into()))?;
        let event = self.start(
            FaultKind::IsolateHolder,
            Target::Worker(worker as u32 + 1),
            lease,
        );
        let what = "cut off from the lock service".to_string();
        self.hold_cut(net, event, ISOLATION_PAST_TTL, what).await
    }

    async fn kill_member(&mut self) -> Result<Result<(), Stopped>, CheckError> {
        let LockService::Etcd(cluster) = &mut *self.lock_service else {
            return Ok(Ok(()));
        };
        let member = self.rng.random_range(0..cluster.len());
        cluster.kill(member);
        let event = self.start(
            FaultKind::KillMember,
            Target::LockService(Some(member as u32)),
            None,
        );
        let down = Duration::from_millis(self.rng.random_range(500..2000));
        let waited = self.pause(down).await;
        let LockService::Etcd(cluster) = &mut *self.lock_service else {
            unreachable!("checked above");
        };
        cluster
            .restart(member)
            .await
            .map_err(|e| setup(format!("cannot restart etcd member {member}"))(e.into()))?;
        self.end(event, Some(format!("down for {down:?}")));
        Ok(waited)
    }
}

/// The first message on `rx` that `pick` accepts, as `pick` maps it. Messages missed while
/// lagging are skipped: a fault waits for what happens next, not for one message in
/// particular. The injector holds a sender of each channel, so none closes while a fault
/// waits; were one to, no message would come, and the caller's time limit ends the wait.
async fn first_match<T: Clone, U>(
    mut rx: broadcast::Receiver<T>,
    mut pick: impl FnMut(T) -> Option<U>,
) -> U {
    loop {
        match rx.recv().await {
            Ok(message) => {
                if let Some(found) = pick(message) {
                    return found;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}
