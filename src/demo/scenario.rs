//! One run of the expired-lease story: client 1 acquires and is frozen with SIGSTOP, its
//! lease expires, client 2 acquires and writes, client 1 is resumed and writes with its
//! stale token.
//!
//! Invariants:
//! - Every time in the report is read from the machine's wall clock, the one clock the demo
//!   and its clients share: a client's event carries the time the client stamped on it
//!   (never the time the demo happened to read the line), the demo's own steps the time it
//!   took them. Events one process causes in another are so ordered as they happened.
//! - Which came first, client 1's expiry or client 2's acquisition, is decided by the lock
//!   service's revisions (the deletion's against the one as of which client 2 found itself
//!   holding the lock), not by when a watch answer arrived.
//! - The lease expiry is observed on the lock service (a watch on the lock name sees client
//!   1's lock key deleted), never inferred from a timer.
//! - Each client is a real `fencelock client` process, killed if the demo stops early (or
//!   dies: it is started with a parent-death signal).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use super::wall_us;

use super::client::Role;
use super::millis;
use fencelock::etcd::mvccpb::event::EventType;
use fencelock::lock::{Client, PrefixWatch};
use fencelock::process::{Signal, send_signal};
use fencelock::storage::Policy;

use super::resource::Resource;

/// How long a client may take to start, connect and acquire a free lock.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long after the freeze the lease may take to expire beyond its TTL: etcd checks for
/// expired leases every 500 ms and may be busy electing a leader; lockd is within
/// milliseconds.
const EXPIRY_SLACK: Duration = Duration::from_secs(5);

/// How long any other step (a hand-over, a write, an exit) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What one scenario runs against.
pub(super) struct Setup<'a> {
    pub client_bin: &'a Path,
    /// TLS and credentials for the clients, as etcdctl's environment variables.
    pub client_env: &'a [(&'static str, std::ffi::OsString)],
    pub endpoints: &'a [String],
    /// The demo's own connection to the lock service, for watching.
    pub client: &'a Client,
    pub storage: &'a str,
    /// Where the clients write; for PostgreSQL, its URL.
    pub resource: Resource,
    pub database_url: Option<&'a str>,
    pub fencing: Policy,
    pub lock: String,
    pub key: String,
    pub ttl: Duration,
}

/// One scenario's outcome, as the `--json` report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// The storage's `--fencing` policy: `strict` or `off`.
    pub fencing: String,
    pub lock: String,
    pub key: String,
    /// The TTL the lock service granted client 1.
    pub ttl_s: u64,
    pub client1: ClientReport,
    pub client2: ClientReport,
    /// The value stored under the key once both clients have written.
    pub final_value: Option<String>,
    /// The lock service deleted client 1's lock key (its lease expired) before client 2
    /// acquired: at or before the revision as of which client 2 found itself holding the lock.
    pub lease_expired_before_client2_acquired: bool,
    /// The revision at which the lock service deleted client 1's lock key.
    pub expiry_revision: i64,
    /// The revision as of which client 2 found itself holding the lock.
    pub client2_acquired_revision: i64,
    pub times_ms: Times,
}

/// What one client did.
#[derive(Clone, Debug, Serialize)]
pub struct ClientReport {
    pub lease: String,
    pub lock_key: String,
    pub token: u64,
    /// The value it tried to write.
    pub value: String,
    pub write: WriteOutcome,
    /// For a stale write: the token the storage had already seen.
    pub current_token: Option<u64>,
    /// Set when the client noticed, before writing, that its lease was gone.
    pub lease_lost_noticed: Option<String>,
    pub exit_status: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOutcome {
    Accepted,
    Stale,
}

/// When things happened, in milliseconds after client 1 acquired the lock.
#[derive(Clone, Debug, Serialize)]
pub struct Times {
    pub client1_acquired: f64,
    pub client1_frozen: f64,
    pub client2_started: f64,
    pub lease_expired: f64,
    pub client2_acquired: f64,
    pub client2_wrote: f64,
    pub client2_exited: f64,
    pub client1_resumed: f64,
    pub client1_wrote: f64,
    pub client1_exited: f64,
}

/// Plays the story once; `say` receives the narration, one line per event.
pub(super) async fn play(setup: &Setup<'_>, say: &mut dyn FnMut(&str)) -> anyhow::Result<Scenario> {
    let mut watch = LockWatch::start(setup.client, &setup.lock).await?;
    let mut c1 = ClientProcess::spawn(setup, Role::First)?;
    let (t0, acquired1) = c1.expect("acquired", START_TIMEOUT).await?;
    let at = |t: Stamp| millis(t.since(t0));
    let seconds = |t: Stamp| format!("{:6.3} s", t.since(t0).as_secs_f64());
    let token1 = field_u64(&acquired1, "token")?;
    let key1 = field_str(&acquired1, "key")?;
    let ttl = field_u64(&acquired1, "ttl")?;
    say(&format!(
        "{}  client 1 acquired {} with fencing token {token1} (lease {}, TTL {ttl} s)",
        seconds(t0),
        setup.lock,
        field_str(&acquired1, "lease")?
    ));

    c1.signal(Signal::STOP)?;
    let frozen = Stamp::now();
    say(&format!(
        "{}  client 1 frozen with SIGSTOP: no keepalives, no progress, it knows nothing",
        seconds(frozen)
    ));
    let mut c2 = ClientProcess::spawn(setup, Role::Second)?;
    let c2_started = Stamp::now();
    say(&format!(
        "{}  client 2 started: it waits for the lock",
        seconds(c2_started)
    ));

    let within = Duration::from_secs(ttl) + EXPIRY_SLACK;
    let (seen_expired, expiry_revision) = watch
        .deleted(&key1, within)
        .await
        .context("client 1's lease never expired on the lock service")?;
    let (c2_acquired, acquired2) = c2.expect("acquired", STEP_TIMEOUT).await?;
    let token2 = field_u64(&acquired2, "token")?;
    // The watch's answer may reach the demo after client 2 has stamped its acquisition; the
    // deletion came first all the same when the lock service made it at or before the
    // revision as of which client 2 found itself holding the lock, and is then shown no
    // later than the acquisition.
    let acquired_revision2 = acquired2["acquired_revision"]
        .as_i64()
        .ok_or_else(|| anyhow!("client 2's acquisition has no revision: {acquired2}"))?;
    let expired_first = expiry_revision <= acquired_revision2;
    let expired = if expired_first {
        seen_expired.min(c2_acquired)
    } else {
        seen_expired
    };
    say(&format!(
        "{}  lock service: client 1's lease expired, its lock key {key1} is deleted",
        seconds(expired)
    ));
    say(&format!(
        "{}  client 2 acquired {} with fencing token {token2}",
        seconds(c2_acquired),
        setup.lock
    ));
    let (c2_wrote, wrote2) = c2.expect("wrote", STEP_TIMEOUT).await?;
    say(&format!(
        "{}  client 2 wrote {:?} with token {token2}: {}",
        seconds(c2_wrote),
        field_str(&wrote2, "value")?,
        outcome_words(&wrote2)
    ));
    let (c2_exited, c2_status) = c2.exit(STEP_TIMEOUT).await?;

    c1.signal(Signal::CONT)?;
    let resumed = Stamp::now();
    say(&format!(
        "{}  client 1 resumed with SIGCONT: it still believes it holds the lock, and writes",
        seconds(resumed)
    ));
    c1.press_enter().await?;
    let (c1_wrote, wrote1) = c1.expect("wrote", STEP_TIMEOUT).await?;
    if let Some(lost) = c1.seen("lease_lost") {
        say(&format!(
            "          client 1 noticed its lease was gone ({}), and wrote anyway",
            lost["reason"].as_str().unwrap_or("no reason given")
        ));
    }
    say(&format!(
        "{}  client 1 wrote {:?} with token {token1}: {}",
        seconds(c1_wrote),
        field_str(&wrote1, "value")?,
        outcome_words(&wrote1)
    ));
    let (c1_exited, c1_status) = c1.exit(STEP_TIMEOUT).await?;

    let final_value = match setup.resource {
        Resource::Storage => stored_value(setup.storage, &setup.key).await?,
        Resource::Postgres => {
            let url = setup.database_url.context("PostgreSQL's URL")?;
            super::resource::postgres_value(url, &setup.key).await?
        }
        Resource::Etcd => super::resource::etcd_value(setup.client, &setup.key).await?,
    };
    let holder = setup.resource.display_name();
    say(&format!(
        "          {holder} now holds {}",
        final_value
            .as_deref()
            .map_or("nothing".to_string(), |v| format!("{v:?}"))
    ));

    Ok(Scenario {
        fencing: setup.fencing.as_str().into(),
        lock: setup.lock.clone(),
        key: setup.key.clone(),
        ttl_s: ttl,
        client1: report(&acquired1, &wrote1, c1.seen("lease_lost"), c1_status)?,
        client2: report(&acquired2, &wrote2, c2.seen("lease_lost"), c2_status)?,
        final_value,
        lease_expired_before_client2_acquired: expired_first,
        expiry_revision,
        client2_acquired_revision: acquired_revision2,
        times_ms: Times {
            client1_acquired: at(t0),
            client1_frozen: at(frozen),
            client2_started: at(c2_started),
            lease_expired: at(expired),
            client2_acquired: at(c2_acquired),
            client2_wrote: at(c2_wrote),
            client2_exited: at(c2_exited),
            client1_resumed: at(resumed),
            client1_wrote: at(c1_wrote),
            client1_exited: at(c1_exited),
        },
    })
}

fn outcome_words(wrote: &Value) -> String {
    match (wrote["outcome"].as_str(), wrote["current"].as_u64()) {
        (Some("stale"), Some(current)) => {
            format!("REJECTED as stale (the fence has seen token {current})")
        }
        (Some("stale"), None) if wrote["reason"] == "lock_gone" => {
            "REJECTED (its lock key is gone)".to_string()
        }
        (Some(outcome), _) => outcome.to_string(),
        (None, _) => "no outcome reported".to_string(),
    }
}

fn report(
    acquired: &Value,
    wrote: &Value,
    lost: Option<Value>,
    status: Option<i32>,
) -> anyhow::Result<ClientReport> {
    Ok(ClientReport {
        lease: field_str(acquired, "lease")?,
        lock_key: field_str(acquired, "key")?,
        token: field_u64(acquired, "token")?,
        value: field_str(wrote, "value")?,
        write: match wrote["outcome"].as_str() {
            Some("accepted") => WriteOutcome::Accepted,
            Some("stale") => WriteOutcome::Stale,
            other => bail!("a client reported the write outcome {other:?}"),
        },
        current_token: wrote["current"].as_u64(),
        lease_lost_noticed: lost.and_then(|l| l["reason"].as_str().map(str::to_owned)),
        exit_status: status,
    })
}

fn field_u64(event: &Value, name: &str) -> anyhow::Result<u64> {
    event[name]
        .as_u64()
        .ok_or_else(|| anyhow!("a client's event has no number {name:?}: {event}"))
}

fn field_str(event: &Value, name: &str) -> anyhow::Result<String> {
    event[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("a client's event has no text {name:?}: {event}"))
}

/// The value under `key`, read without a token so that the look changes no fence.
async fn stored_value(storage: &str, key: &str) -> anyhow::Result<Option<String>> {
    let mut url = reqwest::Url::parse(storage).context("the storage URL")?;
    url.path_segments_mut()
        .map_err(|()| anyhow!("the storage URL cannot take a path"))?
        .pop_if_empty()
        .extend(["v1", "kv", key]);
    let http = fencelock::storage::http_client_builder(&Default::default())?
        .build()
        .context("cannot build the HTTP client")?;
    let response = http
        .get(url)
        .send()
        .await
        .context("cannot read the storage")?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body: fencelock::storage::wire::KvValue = response
        .error_for_status()
        .context("the storage refused a read")?
        .json()
        .await
        .context("the storage answered a read with something unexpected")?;
    Ok(Some(body.value))
}

/// A time on the machine's wall clock, in microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp(u64);

impl Stamp {
    fn now() -> Self {
        Stamp(wall_us())
    }

    /// The time from `earlier` to this one; zero if this one is earlier.
    fn since(self, earlier: Stamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// A `fencelock client --json` child and the events it prints, each with the time the
/// client stamped on it.
struct ClientProcess {
    role: Role,
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<(Stamp, Value)>,
    /// Events read while looking for another one.
    seen: Vec<Value>,
    stderr: JoinHandle<String>,
}

impl ClientProcess {
    fn spawn(setup: &Setup<'_>, role: Role) -> anyhow::Result<Self> {
        let mut cmd = Command::new(setup.client_bin);
        cmd.arg("client")
            .arg(role.number().to_string())
            .arg("--json")
            .arg(format!("--endpoints={}", setup.endpoints.join(",")))
            .args(
                ["--storage", setup.storage]
                    .into_iter()
                    .filter(|_| !setup.storage.is_empty()),
            )
            .args(["--lock", &setup.lock])
            .args(["--key", &setup.key])
            .args(["--ttl", &setup.ttl.as_secs().to_string()])
            .args(["--resource", setup.resource.as_str()])
            .env_remove("ETCDCTL_ENDPOINTS")
            .envs(setup.client_env.iter().map(|(name, value)| (*name, value)))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(url) = setup.database_url {
            cmd.args(["--database-url", url]);
        }
        if setup.resource != Resource::Storage && setup.fencing == Policy::Off {
            cmd.arg("--unfenced");
        }
        fencelock::process::die_with_parent(cmd.as_std_mut());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", setup.client_bin.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the client's stdout")?;
        let mut stderr = child.stderr.take().context("the client's stderr")?;
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "text", "text": line}));
                let at = event["at_us"].as_u64().map_or_else(Stamp::now, Stamp);
                if tx.send((at, event)).is_err() {
                    return;
                }
            }
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Ok(ClientProcess {
            role,
            child,
            stdin,
            events,
            seen: Vec::new(),
            stderr,
        })
    }

    fn name(&self) -> String {
        format!("client {}", self.role.number())
    }

    /// The next event of `kind`, and when the client stamped it; other events are kept for
    /// [`ClientProcess::seen`].
    async fn expect(&mut self, kind: &str, within: Duration) -> anyhow::Result<(Stamp, Value)> {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((at, event))) if event["event"] == kind => return Ok((at, event)),
                Ok(Some((_, event))) => self.seen.push(event),
                Ok(None) => {
                    // The client ended without saying it: its stderr says why.
                    let status = timeout(STEP_TIMEOUT, self.child.wait()).await;
                    let stderr = timeout(STEP_TIMEOUT, &mut self.stderr)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    bail!(
                        "{} ended ({}) before reporting {kind:?}: {}",
                        self.name(),
                        match status {
                            Ok(Ok(status)) => status.to_string(),
                            _ => "status unknown".into(),
                        },
                        last_line(&stderr)
                    );
                }
                Err(_) => bail!("{} did not report {kind:?} within {within:?}", self.name()),
            }
        }
    }

    /// An event of `kind` read earlier, if any.
    fn seen(&self, kind: &str) -> Option<Value> {
        self.seen.iter().find(|e| e["event"] == kind).cloned()
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow!("{} has already ended", self.name()))?;
        // Our own child, not reaped yet (`id()` says so), so the PID names no other process.
        if !send_signal(pid, signal) {
            bail!("cannot signal {}", self.name());
        }
        Ok(())
    }

    /// What a person does at client 1's prompt.
    async fn press_enter(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the client's stdin")?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits for the client to exit; its exit status (`None` if a signal ended it).
    async fn exit(&mut self, within: Duration) -> anyhow::Result<(Stamp, Option<i32>)> {
        // Later events (there should be none) are kept like any other.
        let status = timeout(within, self.child.wait())
            .await
            .map_err(|_| anyhow!("{} did not exit within {within:?}", self.name()))??;
        let at = Stamp::now();
        while let Ok((_, event)) = self.events.try_recv() {
            self.seen.push(event);
        }
        Ok((at, status.code()))
    }
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
}

/// A watch on every lock key under a lock name, started before the clients.
struct LockWatch {
    deletions: mpsc::UnboundedReceiver<(Stamp, String, i64)>,
    // Owns the watch, which ends when the scenario is done and the task is aborted.
    task: JoinHandle<()>,
}

impl Drop for LockWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LockWatch {
    async fn start(client: &Client, lock: &str) -> anyhow::Result<Self> {
        // Nothing the clients do may happen before the watch is in place: `start` returns
        // once the lock service has confirmed it.
        let mut watch = timeout(
            STEP_TIMEOUT,
            PrefixWatch::start(client, format!("{lock}/").as_bytes(), 0),
        )
        .await
        .context("the lock service did not start the watch")?
        .with_context(|| format!("cannot watch {lock} on the lock service"))?;
        let (tx, deletions) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(Some(events)) = watch.next().await {
                let at = Stamp::now();
                for event in events {
                    if event.r#type == EventType::Delete as i32 {
                        let (key, revision) = event
                            .kv
                            .map_or((Default::default(), 0), |kv| (kv.key, kv.mod_revision));
                        let key = String::from_utf8_lossy(&key).into_owned();
                        let _ = tx.send((at, key, revision));
                    }
                }
            }
        });
        Ok(LockWatch { deletions, task })
    }

    /// When the demo saw the lock service delete `key`, and the deletion's revision.
    async fn deleted(&mut self, key: &str, within: Duration) -> anyhow::Result<(Stamp, i64)> {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.deletions.recv()).await {
                Ok(Some((at, deleted, revision))) if deleted == key => return Ok((at, revision)),
                Ok(Some(_)) => {}
                Ok(None) => bail!("the watch on the lock service ended"),
                Err(_) => bail!("{key} was not deleted within {within:?}"),
            }
        }
    }
}
