//! The seed's client, for real: the body of `fencelock client 1|2`.
//!
//! Client 1 acquires the lock, says how to make its lease go away, waits for Enter (or is
//! paused with `--pause`) and then writes; client 2 acquires and writes at once. Both write
//! with their fencing token and report what the storage answered.
//!
//! Invariants:
//! - Client 1 writes after Enter or its pause *even if it knows its lock is gone*: a paused
//!   process does not know it was paused, and showing what the storage does with that write
//!   is the point. It says so in a warning first (while it waits, as soon as the lock is
//!   lost; after a pause, when it looks before writing).
//! - The whole client runs on one thread ([`run`] builds a current-thread runtime), so
//!   `--pause` can stop all its work, keepalives included, by blocking that thread, as a
//!   stop-the-world garbage collector does.
//! - Every event goes out as one line, flushed at once: in plain words by default, as JSON
//!   lines with `--json` (the form `fencelock demo` reads).

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncBufReadExt;

use fencelock::FencingToken;
use fencelock::lock::{Client, LockGuard, LossReason, Session};
use fencelock::storage::{Protocol, StorageClient, StorageOptions};

use super::resource::{Refused, Resource, Target};

/// How long releasing the lock may take once the write is done. The outcome is already
/// known by then; a lock service that does not answer must not hold the exit back.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which of the seed's two clients this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Acquires, then waits for Enter (or pauses) before writing.
    First,
    /// Acquires and writes at once.
    Second,
}

impl Role {
    pub fn number(self) -> u8 {
        match self {
            Role::First => 1,
            Role::Second => 2,
        }
    }

    /// What this client writes: a value that says who wrote it.
    pub fn value(self) -> String {
        format!("written by client {}", self.number())
    }
}

/// Everything `fencelock client` takes from its command line.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub role: Role,
    pub endpoints: Vec<String>,
    /// How to connect to them (TLS, timeout).
    pub connect: fencelock::lock::ConnectOptions,
    /// Base URL of the fenced storage.
    pub storage: String,
    /// Its CA bundle and bearer token, when it serves HTTPS or asks for one.
    pub storage_options: StorageOptions,
    /// The storage protocol: REST (fenced by the lock name) or the seed's (the key is its own
    /// fence), which the seed's own storage speaks.
    pub protocol: Protocol,
    /// The lock name; also the fence the writes are checked against.
    pub lock: String,
    pub key: String,
    pub ttl: Duration,
    /// Client 1 only: stop the whole process for this long instead of waiting for Enter.
    pub pause: Option<Duration>,
    /// JSON lines instead of plain words.
    pub json: bool,
    /// Where to write: the storage, PostgreSQL or the lock service.
    pub resource: Resource,
    /// PostgreSQL's URL, for `Resource::Postgres`.
    pub database_url: Option<String>,
    /// For PostgreSQL and etcd: write through the fence (the storage's own policy decides
    /// for the storage).
    pub fenced: bool,
}

/// How a client ended (the command maps it to an exit status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The storage accepted the write.
    Accepted,
    /// The storage rejected the write: a newer holder's token was seen first.
    Stale,
}

/// Runs the client on a runtime of its own, one thread (see the module's invariants).
pub fn run(options: &ClientOptions, out: &mut impl Write) -> anyhow::Result<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(client(options, out, enter_pressed()));
    // Reading stdin occupies a blocking thread that no one can interrupt.
    runtime.shutdown_background();
    outcome
}

/// Resolves when a line (or the end of input) arrives on stdin. Read on tokio's blocking
/// pool, so the runtime thread keeps the lease alive while a person makes up their mind.
async fn enter_pressed() {
    let mut line = String::new();
    let _ = tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
}

/// The client's story: acquire, (client 1: wait or pause), write, release.
pub async fn client(
    options: &ClientOptions,
    out: &mut impl Write,
    enter: impl Future<Output = ()>,
) -> anyhow::Result<Outcome> {
    let mut say = Reporter {
        out,
        json: options.json,
        role: options.role,
    };
    // A bad URL is the user's mistake: report it before taking any lock.
    let storage = match options.resource {
        Resource::Storage => Some(
            StorageClient::with_options(&options.storage, &options.storage_options)?
                .with_protocol(options.protocol),
        ),
        Resource::Postgres | Resource::Etcd => None,
    };
    let client = Client::connect_with(&options.endpoints, &options.connect).await?;
    let mut target = match (options.resource, storage) {
        (_, Some(storage)) => Target::Storage(storage),
        (Resource::Postgres, None) => {
            let url = options
                .database_url
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--resource postgres needs --database-url"))?;
            Target::postgres(url, options.fenced).await?
        }
        (Resource::Etcd | Resource::Storage, None) => Target::Etcd {
            client: client.clone(),
            fenced: options.fenced,
        },
    };
    let session = client.session(options.ttl).await?;
    let guard = session.lock(&options.lock).await?;
    say.acquired(options, &session, &guard);

    let mut noticed = false;
    if options.role == Role::First {
        match options.pause {
            Some(pause) => {
                say.pausing(pause);
                stop_the_world(pause);
                say.event(
                    json!({"event": "resumed"}),
                    "resumed: as far as I know I still hold the lock".into(),
                );
            }
            None => {
                say.waiting(&client, &session);
                // A process that merely waits can tell its lock is gone, and says so; it
                // still writes on Enter, as one that was paused and knows nothing would.
                tokio::pin!(enter);
                tokio::select! {
                    () = &mut enter => {}
                    reason = guard.lost() => {
                        say.lost(reason, "press Enter and I will still write");
                        noticed = true;
                        enter.await;
                    }
                }
            }
        }
    }
    if let Some(reason) = session.lost_reason().filter(|_| !noticed) {
        say.lost(reason, "writing anyway");
    }

    let token = guard.token();
    let value = options.role.value();
    let written = target
        .write(
            &guard,
            &options.lock,
            options.protocol,
            &options.key,
            &value,
        )
        .await;
    let outcome = match written {
        Ok(None) => {
            say.wrote(options, token, &value, None);
            Ok(Outcome::Accepted)
        }
        Ok(Some(refused)) => {
            say.wrote(options, token, &value, Some(refused));
            Ok(Outcome::Stale)
        }
        Err(e) => Err(e),
    };
    // Releasing, also after a failed write, is a courtesy to the next holder; the lease
    // would expire anyway.
    let release = async {
        let _ = guard.unlock().await;
        let _ = session.close().await;
    };
    let _ = tokio::time::timeout(RELEASE_TIMEOUT, release).await;
    outcome
}

/// Stops all of this client's work for `pause`: keepalives, I/O, timers. The client runs on
/// one runtime thread, so blocking it stops every task; the kernel still holds its sockets,
/// as it does for a process frozen by a garbage collector or SIGSTOP. (Sending the process
/// SIGSTOP would stop it too, but a shell takes a stopped foreground job for one suspended
/// with Ctrl-Z and puts it in the background.)
fn stop_the_world(pause: Duration) {
    std::thread::sleep(pause);
}

/// Prints events as plain words or JSON lines.
struct Reporter<'a, W: Write> {
    out: &'a mut W,
    json: bool,
    role: Role,
}

impl<W: Write> Reporter<'_, W> {
    fn event(&mut self, mut value: serde_json::Value, words: String) {
        let line = if self.json {
            value["client"] = json!(self.role.number());
            // Stamped here, not when a reader sees the line: the demo orders events of
            // different processes by these stamps, which one machine's clock makes comparable.
            value["at_us"] = json!(super::wall_us());
            value.to_string()
        } else {
            format!("client {}: {words}", self.role.number())
        };
        // A reader that went away must not stop the client from writing and releasing.
        let _ = writeln!(self.out, "{line}").and_then(|()| self.out.flush());
    }

    fn acquired(&mut self, options: &ClientOptions, session: &Session, guard: &LockGuard) {
        let ttl = session.ttl().as_secs();
        let asked = options.ttl.as_secs();
        let granted = if ttl == asked {
            format!("TTL {ttl} s")
        } else {
            format!("TTL {ttl} s granted, {asked} s asked")
        };
        self.event(
            json!({
                "event": "acquired",
                "lock": options.lock,
                "key": guard.key(),
                "lease": session.lease().to_string(),
                "token": guard.token(),
                "acquired_revision": guard.acquired_revision(),
                "ttl": ttl,
            }),
            format!(
                "acquired lock {} with fencing token {} (lease {}, {granted})",
                options.lock,
                guard.token(),
                session.lease()
            ),
        );
    }

    fn waiting(&mut self, client: &Client, session: &Session) {
        let endpoints = client
            .endpoints()
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect::<Vec<_>>()
            .join(",");
        let revoke = format!(
            "etcdctl --endpoints={endpoints} lease revoke {}",
            session.lease()
        );
        if self.json {
            self.event(json!({"event": "waiting", "revoke": revoke}), String::new());
            return;
        }
        self.event(
            json!({}),
            "to make my lease go away now, as a long pause would, run:".into(),
        );
        let _ = writeln!(self.out, "    {revoke}");
        self.event(
            json!({}),
            "then run client 2, and press Enter here to write with my token".into(),
        );
    }

    fn lost(&mut self, reason: LossReason, next: &str) {
        self.event(
            json!({"event": "lease_lost", "reason": reason.to_string()}),
            format!(
                "warning: my lock is gone ({reason}); {next}, as a process that was paused \
                 and does not know it would"
            ),
        );
    }

    fn pausing(&mut self, pause: Duration) {
        self.event(
            json!({"event": "pausing", "pause_ms": pause.as_millis() as u64}),
            format!(
                "pausing the whole process for {pause:?}, keepalives included (a stop-the-world pause)"
            ),
        );
    }

    fn wrote(
        &mut self,
        options: &ClientOptions,
        token: FencingToken,
        value: &str,
        refused: Option<Refused>,
    ) {
        let mut event = json!({
            "event": "wrote",
            "key": options.key,
            "value": value,
            "token": token,
            "outcome": if refused.is_some() { "stale" } else { "accepted" },
        });
        let resource = options.resource.display_name();
        let words = match refused {
            None => format!(
                "wrote {value:?} to {} with token {token}: accepted",
                options.key
            ),
            Some(Refused::Stale(current)) => {
                event["current"] = json!(current);
                format!(
                    "write of {value:?} to {} with token {token} rejected: {resource} has \
                     already seen token {current} for {}, so mine is stale",
                    options.key, options.lock
                )
            }
            Some(Refused::LockGone) => {
                event["reason"] = json!("lock_gone");
                format!(
                    "write of {value:?} to {} with token {token} rejected: {resource} no \
                     longer has my lock key for {}",
                    options.key, options.lock
                )
            }
        };
        self.event(event, words);
    }
}
