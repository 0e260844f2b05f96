//! One checker worker: the body of the hidden `fencelock check-worker` command.
//!
//! It loops as Jepsen's etcd lock tests do: open a session, lock, fenced read, work for a
//! random time, fenced write, unlock, close. Under the set workload the read returns the set
//! and the write adds the worker's own element (`w<worker>-<op>`, `<op>` the write's own
//! operation number) to the set read; under the counter workload the write is the counter
//! read + 1. The read and the write go to the run's resource: the storage (fenced by the
//! server's policy), PostgreSQL (one transaction from the read to the write, opened by
//! `PgFence::begin` when fenced) or a key in the lock service (a plain get, then
//! `EtcdFence::apply_held` when fenced, a plain put when not). Every
//! operation is recorded twice, before (`invoke`) and after (`ok`/`fail`/`info`), to the
//! worker's history file and, as the same JSON line, to stdout, where the checker follows
//! the worker to aim its faults.
//!
//! Invariants: a line is in the history file before the operation it announces starts or
//! right after it ends, so a worker frozen or killed at any point has recorded everything it
//! did; the worker never consults its session's loss signals between its read and its write,
//! because a process paused there would not have either: the storage's fence must catch it.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use reqwest::StatusCode;
use tokio::time::Instant;

use super::history::{
    Event, EventType, Log, OpKind, Resource, Workload, decode_set, element, encode_set, mono_ns,
    wall_ms,
};
use fencelock::FencingToken;
use fencelock::etcd::etcdserverpb as pb;
use fencelock::fence::etcd::{EtcdFence, EtcdFenceError, Holder, Op as EtcdOp};
use fencelock::fence::postgres::{FencedTransaction, PgFence, PgFenceError};
use fencelock::lock::Client;
use fencelock::storage::{ClientError, StorageClient};

/// A storage request that gets no answer in this time is given up; a write given up may
/// still have taken effect (`info`).
const STORAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The error code of the storage's `503` when a request met its admission limit.
const BUSY: &str = "busy";

/// Pause after a failed step, so a worker facing a dead service does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What one worker does.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub id: u32,
    pub endpoints: Vec<String>,
    /// How to connect to them (TLS, credentials).
    pub connect: fencelock::lock::ConnectOptions,
    /// Where the data lives, and so which adapter fences it.
    pub resource: Resource,
    /// Base URL of the storage (`--resource storage`).
    pub storage: Option<String>,
    /// The database (`--resource postgres`).
    pub database_url: Option<String>,
    /// Whether the adapter's fence is used (postgres and etcd; the storage's policy is the
    /// server's).
    pub fenced: bool,
    /// The lock name, which is also the fence of the key.
    pub lock: String,
    /// What a cycle does with the key.
    pub workload: Workload,
    /// The key holding the counter or the set (the storage key, the etcd key, or the name of
    /// the PostgreSQL row).
    pub key: String,
    pub ttl: Duration,
    /// The work between read and write lasts a uniformly random time in this range.
    pub work: (Duration, Duration),
    pub seed: u64,
    pub history: PathBuf,
}

/// Runs the loop until `stop` resolves. Errors only when the history cannot be written or
/// the lock service cannot be reached at start.
pub async fn run(
    options: &WorkerOptions,
    out: impl Write,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut recorder = Recorder {
        worker: options.id,
        next_op: 0,
        log: Log::create(&options.history)?,
        out,
    };
    let client = Client::connect_with(&options.endpoints, &options.connect).await?;
    let mut data = match options.resource {
        Resource::Storage => {
            let url = options
                .storage
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--resource storage needs --storage"))?;
            let http = fencelock::storage::http_client_builder(&Default::default())?
                .timeout(STORAGE_TIMEOUT)
                .build()
                .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
            Data::Storage(StorageClient::with_http_client(url, http)?)
        }
        Resource::Postgres => {
            let url = options
                .database_url
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--resource postgres needs --database-url"))?;
            let mut config: tokio_postgres::Config = url.parse()?;
            config.connect_timeout(STORAGE_TIMEOUT);
            Data::Postgres(Box::new(Pg {
                config,
                fence: PgFence::in_schema(CHECK_SCHEMA)?,
                client: None,
            }))
        }
        Resource::Etcd => Data::Etcd(EtcdFence::new(client.clone())),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed ^ u64::from(options.id));
    tokio::select! {
        result = cycles(options, &client, &mut data, &mut recorder, &mut rng) => result,
        () = stop => Ok(()),
    }
}

/// The schema of the checker's PostgreSQL fence and data table, apart from the `fencelock`
/// schema a user's own programs fence in, so a check never touches their fences.
pub const CHECK_SCHEMA: &str = "fencelock_check";

/// The checker's data table in [`CHECK_SCHEMA`]: one row per checked key, holding the whole
/// counter or set as text, so that a read-modify-write by a stale holder overwrites, and
/// loses, what a newer holder added (one row per element would never lose an add).
pub const DATA_TABLE: &str = "fencelock_check.data";

/// Where a worker's data lives.
enum Data {
    Storage(StorageClient),
    Postgres(Box<Pg>),
    Etcd(EtcdFence),
}

/// A worker's PostgreSQL connection, opened again after it broke (the server was killed).
struct Pg {
    config: tokio_postgres::Config,
    fence: PgFence,
    client: Option<tokio_postgres::Client>,
}

impl Pg {
    async fn connected(&mut self) -> Result<&mut tokio_postgres::Client, tokio_postgres::Error> {
        if self
            .client
            .as_ref()
            .is_some_and(tokio_postgres::Client::is_closed)
        {
            self.client = None;
        }
        if self.client.is_none() {
            let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

async fn cycles(
    options: &WorkerOptions,
    client: &Client,
    data: &mut Data,
    recorder: &mut Recorder<impl Write>,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<()> {
    loop {
        let op = recorder.invoke(OpKind::Session, Fields::default())?;
        let session = match client.session(options.ttl).await {
            Ok(session) => {
                let lease = Some(session.lease().get());
                recorder.ok(
                    op,
                    Fields {
                        lease,
                        ..Fields::default()
                    },
                )?;
                session
            }
            Err(e) => {
                recorder.fail(op, Fields::error(&e))?;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let lease = Some(session.lease().get());

        let op = recorder.invoke(
            OpKind::Lock,
            Fields {
                lease,
                ..Fields::default()
            },
        )?;
        let guard = match session.lock(&options.lock).await {
            Ok(guard) => {
                let token = Some(guard.token().get());
                recorder.ok(
                    op,
                    Fields {
                        lease,
                        token,
                        ..Fields::default()
                    },
                )?;
                guard
            }
            Err(e) => {
                recorder.fail(
                    op,
                    Fields {
                        lease,
                        ..Fields::error(&e)
                    },
                )?;
                close(recorder, session, lease).await?;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let token = guard.token();
        let with_token = Fields {
            token: Some(token.get()),
            ..Fields::default()
        };
        // A turn whose read or write did not get through ends with a pause, so a worker
        // facing a dead resource does not spin through sessions while it restarts.
        let answered = match data {
            Data::Storage(storage) => storage_turn(recorder, storage, options, token, rng).await?,
            Data::Postgres(pg) => postgres_turn(recorder, pg, options, token, rng).await?,
            Data::Etcd(etcd) => {
                let holder = Holder::of(&guard);
                etcd_turn(recorder, etcd, client, options, &holder, rng).await?
            }
        };
        let failed = !answered;

        let op = recorder.invoke(OpKind::Unlock, with_token.clone())?;
        match guard.unlock().await {
            Ok(()) => recorder.ok(op, with_token.clone())?,
            Err(e) => recorder.fail(
                op,
                Fields {
                    token: Some(token.get()),
                    ..Fields::error(&e)
                },
            )?,
        }
        close(recorder, session, lease).await?;
        if failed {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// What a read returned, in the workload's terms.
enum ReadValue {
    Counter(u64),
    Set(Vec<String>),
}

impl ReadValue {
    /// The stored text (empty when the key has no value yet) as the workload reads it.
    fn parse(workload: Workload, text: &str) -> Option<Self> {
        match workload {
            Workload::Counter if text.is_empty() => Some(ReadValue::Counter(0)),
            Workload::Counter => text.parse().ok().map(ReadValue::Counter),
            Workload::Set => decode_set(text).map(ReadValue::Set),
        }
    }

    /// The read's completion fields.
    fn fields(&self, base: &Fields) -> Fields {
        match self {
            ReadValue::Counter(value) => Fields {
                value: Some(*value),
                ..base.clone()
            },
            ReadValue::Set(elements) => Fields {
                set: Some(elements.clone()),
                ..base.clone()
            },
        }
    }
}

/// Records a read's completion from the stored text (empty when nothing is stored yet): `ok`
/// with what it read, or `fail` when the text is not the workload's.
fn read_done(
    recorder: &mut Recorder<impl Write>,
    op: Op,
    options: &WorkerOptions,
    text: &str,
    with_token: &Fields,
) -> anyhow::Result<Option<ReadValue>> {
    match ReadValue::parse(options.workload, text) {
        Some(read) => {
            recorder.ok(op, read.fields(with_token))?;
            Ok(Some(read))
        }
        None => {
            let expected = match options.workload {
                Workload::Counter => "a number",
                Workload::Set => "a set of w<worker>-<op> elements",
            };
            let error = format!(
                "the {} holds {text:?}, not {expected}",
                options.workload.name()
            );
            recorder.fail(
                op,
                Fields {
                    error: Some(error),
                    ..with_token.clone()
                },
            )?;
            Ok(None)
        }
    }
}

/// Works between read and write for a uniformly random time in `range`, counted
/// from `read_at`, the moment the read was answered. A freeze that lands after the read is
/// part of the work, as a pause is part of the wall-clock time of any wait: a worker frozen
/// for longer than its work writes as soon as it is continued, wherever the freeze caught it
/// (before or after the read's event was recorded), so the checker knows when the stale
/// write comes.
async fn work(range: (Duration, Duration), rng: &mut rand::rngs::StdRng, read_at: Instant) {
    let (low, high) = range;
    let time = if high > low {
        rng.random_range(low..=high)
    } else {
        low
    };
    tokio::time::sleep_until(read_at + time).await;
}

/// What follows from `read` (the counter + 1, or the set with this write's own element
/// added), as stored text and as the write's fields.
fn next_value(
    recorder: &Recorder<impl Write>,
    options: &WorkerOptions,
    token: FencingToken,
    read: ReadValue,
) -> (String, Fields) {
    let base = Fields {
        token: Some(token.get()),
        ..Fields::default()
    };
    match read {
        ReadValue::Counter(value) => (
            (value + 1).to_string(),
            Fields {
                value: Some(value + 1),
                ..base
            },
        ),
        ReadValue::Set(mut elements) => {
            let added = element(options.id, recorder.next_op_id());
            elements.push(added.clone());
            (
                encode_set(&elements),
                Fields {
                    element: Some(added),
                    ..base
                },
            )
        }
    }
}

/// One turn on the storage: fenced read, work, fenced write. True when the storage answered
/// both (accepted, or refused as stale).
async fn storage_turn(
    recorder: &mut Recorder<impl Write>,
    storage: &StorageClient,
    options: &WorkerOptions,
    token: FencingToken,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<bool> {
    let fence = Some(options.lock.as_str());
    let with_token = Fields {
        token: Some(token.get()),
        ..Fields::default()
    };
    let op = recorder.invoke(OpKind::Read, with_token.clone())?;
    let answer = storage.read(&options.key, token, fence).await;
    let read_at = Instant::now();
    let read = match answer {
        Ok(stored) => {
            let text = stored.map(|s| s.value).unwrap_or_default();
            read_done(recorder, op, options, &text, &with_token)?
        }
        Err(e) => {
            recorder.complete(op, outcome(&e), storage_failure(&e, &with_token))?;
            None
        }
    };
    let Some(read) = read else {
        return Ok(false);
    };
    work(options.work, rng, read_at).await;
    let (text, fields) = next_value(recorder, options, token, read);
    let op = recorder.invoke(OpKind::Write, fields.clone())?;
    match storage.write(&options.key, &text, token, fence).await {
        Ok(()) => recorder.ok(op, fields)?,
        Err(e @ ClientError::StaleToken { .. }) => {
            recorder.fail(op, storage_failure(&e, &fields))?;
        }
        Err(e) => {
            recorder.complete(op, outcome(&e), storage_failure(&e, &fields))?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// A PostgreSQL transaction of one turn: fenced by `PgFence::begin`, or plain (unfenced).
enum PgTransaction<'a> {
    Fenced(FencedTransaction<'a>),
    Plain(tokio_postgres::Transaction<'a>),
}

impl<'a> PgTransaction<'a> {
    fn statements(&self) -> &tokio_postgres::Transaction<'a> {
        match self {
            PgTransaction::Fenced(tx) => tx,
            PgTransaction::Plain(tx) => tx,
        }
    }

    async fn commit(self) -> Result<(), String> {
        match self {
            PgTransaction::Fenced(tx) => tx.commit().await.map_err(|e| describe(&e)),
            PgTransaction::Plain(tx) => tx.commit().await.map_err(|e| describe(&e)),
        }
    }
}

/// One turn on PostgreSQL: one transaction from the read to the write, opened by
/// `PgFence::begin` under the lock name and the token when fenced (the fence row, locked
/// until the commit, serialises holders), plain otherwise. True when PostgreSQL answered it
/// to the end (committed, or refused the token).
///
/// Outcomes: a stale token, a connection that could not be made or a statement that failed
/// are definite (`fail`): nothing was committed, and PostgreSQL rolls back a transaction
/// whose connection is gone. A failed commit is unknown (`info`): the commit may have
/// reached the write-ahead log before the answer was lost.
async fn postgres_turn(
    recorder: &mut Recorder<impl Write>,
    pg: &mut Pg,
    options: &WorkerOptions,
    token: FencingToken,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<bool> {
    let with_token = Fields {
        token: Some(token.get()),
        ..Fields::default()
    };
    let op = recorder.invoke(OpKind::Read, with_token.clone())?;
    let failed = |e: &dyn std::error::Error| Fields {
        error: Some(describe(e)),
        ..with_token.clone()
    };
    let fence = pg.fence.clone();
    let client = match pg.connected().await {
        Ok(client) => client,
        Err(e) => {
            recorder.fail(op, failed(&e))?;
            return Ok(false);
        }
    };
    let begun = if options.fenced {
        fence
            .begin(client, &options.lock, token)
            .await
            .map(PgTransaction::Fenced)
    } else {
        client
            .transaction()
            .await
            .map(PgTransaction::Plain)
            .map_err(PgFenceError::from)
    };
    let tx = match begun {
        Ok(tx) => tx,
        Err(PgFenceError::Stale(stale)) => {
            let fields = Fields {
                stale: true,
                current: Some(stale.current.get()),
                ..with_token.clone()
            };
            recorder.fail(op, fields)?;
            return Ok(true);
        }
        Err(e) => {
            recorder.fail(op, failed(&e))?;
            return Ok(false);
        }
    };
    let select = format!("SELECT value FROM {DATA_TABLE} WHERE name = $1");
    let answer = tx.statements().query_opt(&select, &[&options.key]).await;
    let read_at = Instant::now();
    let text = match answer {
        Ok(row) => row.map(|r| r.get::<_, String>(0)).unwrap_or_default(),
        Err(e) => {
            recorder.fail(op, failed(&e))?;
            return Ok(false);
        }
    };
    let Some(read) = read_done(recorder, op, options, &text, &with_token)? else {
        return Ok(false);
    };
    work(options.work, rng, read_at).await;
    let (text, fields) = next_value(recorder, options, token, read);
    let op = recorder.invoke(OpKind::Write, fields.clone())?;
    let upsert = format!(
        "INSERT INTO {DATA_TABLE} (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value"
    );
    if let Err(e) = tx
        .statements()
        .execute(&upsert, &[&options.key, &text])
        .await
    {
        let error = Fields {
            error: Some(describe(&e)),
            ..fields
        };
        recorder.fail(op, error)?;
        return Ok(false);
    }
    match tx.commit().await {
        Ok(()) => recorder.ok(op, fields)?,
        Err(error) => {
            let error = Fields {
                error: Some(format!("commit: {error}")),
                ..fields
            };
            recorder.complete(op, EventType::Info, error)?;
            return Ok(false);
        }
    }
    Ok(true)
}

/// One turn on a key in the lock service: a plain linearizable get, work, and the write:
/// `EtcdFence::apply_held` when fenced (applied only while the holder's lock key exists with
/// its token as create_revision), a plain put otherwise. True when etcd answered both.
///
/// Outcomes: a write refused because the lock key is gone is definite (`fail`, counted as a
/// stale refusal); any other failure of a write, a timeout above all, is unknown (`info`):
/// the Txn or put may have been applied.
async fn etcd_turn(
    recorder: &mut Recorder<impl Write>,
    etcd: &EtcdFence,
    client: &Client,
    options: &WorkerOptions,
    holder: &Holder,
    rng: &mut rand::rngs::StdRng,
) -> anyhow::Result<bool> {
    let token = holder.token;
    let with_token = Fields {
        token: Some(token.get()),
        ..Fields::default()
    };
    let op = recorder.invoke(OpKind::Read, with_token.clone())?;
    let mut kv = client.kv();
    let get = kv.range(pb::RangeRequest {
        key: options.key.as_bytes().to_vec(),
        ..Default::default()
    });
    let answer = tokio::time::timeout(STORAGE_TIMEOUT, get).await;
    let read_at = Instant::now();
    let text = match answer {
        Ok(Ok(response)) => response
            .into_inner()
            .kvs
            .first()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .unwrap_or_default(),
        Ok(Err(status)) => {
            recorder.fail(op, Fields::error_text(status.to_string(), &with_token))?;
            return Ok(false);
        }
        Err(_) => {
            let error = format!("no answer within {STORAGE_TIMEOUT:?}");
            recorder.complete(op, EventType::Info, Fields::error_text(error, &with_token))?;
            return Ok(false);
        }
    };
    let Some(read) = read_done(recorder, op, options, &text, &with_token)? else {
        return Ok(false);
    };
    work(options.work, rng, read_at).await;
    let (text, fields) = next_value(recorder, options, token, read);
    let op = recorder.invoke(OpKind::Write, fields.clone())?;
    let written: Result<(), (EventType, String)> = if options.fenced {
        let ops = [EtcdOp::put(options.key.clone(), text)];
        match tokio::time::timeout(STORAGE_TIMEOUT, etcd.apply_held(holder, &ops)).await {
            Ok(Ok(_revision)) => Ok(()),
            Ok(Err(e @ EtcdFenceError::LockGone { .. })) => {
                let refused = Fields {
                    stale: true,
                    error: Some(e.to_string()),
                    ..fields
                };
                recorder.fail(op, refused)?;
                return Ok(true);
            }
            Ok(Err(e)) => Err((EventType::Info, describe(&e))),
            Err(_) => Err((
                EventType::Info,
                format!("no answer within {STORAGE_TIMEOUT:?}"),
            )),
        }
    } else {
        let put = kv.put(pb::PutRequest {
            key: options.key.as_bytes().to_vec(),
            value: text.into_bytes(),
            ..Default::default()
        });
        match tokio::time::timeout(STORAGE_TIMEOUT, put).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err((EventType::Info, status.to_string())),
            Err(_) => Err((
                EventType::Info,
                format!("no answer within {STORAGE_TIMEOUT:?}"),
            )),
        }
    };
    match written {
        Ok(()) => recorder.ok(op, fields)?,
        Err((kind, error)) => {
            recorder.complete(op, kind, Fields::error_text(error, &fields))?;
            return Ok(false);
        }
    }
    Ok(true)
}

async fn close(
    recorder: &mut Recorder<impl Write>,
    session: fencelock::lock::Session,
    lease: Option<i64>,
) -> anyhow::Result<()> {
    let op = recorder.invoke(
        OpKind::Close,
        Fields {
            lease,
            ..Fields::default()
        },
    )?;
    match session.close().await {
        Ok(()) => recorder.ok(
            op,
            Fields {
                lease,
                ..Fields::default()
            },
        ),
        Err(e) => recorder.fail(
            op,
            Fields {
                lease,
                ..Fields::error(&e)
            },
        ),
    }
}

/// How a storage request that got no success ended: `fail` only for a definite no, `info`
/// for everything else, because the storage may have applied it.
///
/// Definite: a refusal by the fence (409: stale token, wrong fence) or of the request itself
/// (4xx, or the seed protocol's `err`), a `503 busy` (the admission limit answers before the
/// body is read, so nothing was applied), and a connection that was never made or a request
/// that was never sent. Unknown: any other 5xx, in particular the `503` of a failed commit,
/// whose batch may still be replayed when the storage restarts; and a request sent without an
/// answer (a timeout, a reset, a body cut short).
fn outcome(error: &ClientError) -> EventType {
    match error {
        ClientError::StaleToken { .. }
        | ClientError::WrongFence { .. }
        | ClientError::BadUrl(_)
        | ClientError::Setup(_)
        | ClientError::FenceInSeedProtocol(_) => EventType::Fail,
        ClientError::Server { status, error, .. } => {
            if status.is_server_error()
                && !(*status == StatusCode::SERVICE_UNAVAILABLE && error == BUSY)
            {
                EventType::Info
            } else {
                EventType::Fail
            }
        }
        ClientError::Http(e) if e.is_connect() => EventType::Fail,
        ClientError::Http(_) => EventType::Info,
    }
}

fn storage_failure(error: &ClientError, base: &Fields) -> Fields {
    match error {
        ClientError::StaleToken { current, .. } => Fields {
            stale: true,
            current: Some(current.get()),
            ..base.clone()
        },
        other => Fields {
            error: Some(describe(other)),
            ..base.clone()
        },
    }
}

/// The optional parts of an event.
#[derive(Clone, Default)]
struct Fields {
    lease: Option<i64>,
    token: Option<u64>,
    value: Option<u64>,
    element: Option<String>,
    set: Option<Vec<String>>,
    stale: bool,
    current: Option<u64>,
    error: Option<String>,
}

impl Fields {
    fn error(e: &(dyn std::error::Error + 'static)) -> Self {
        Self {
            error: Some(describe(e)),
            ..Self::default()
        }
    }

    fn error_text(error: String, base: &Fields) -> Self {
        Self {
            error: Some(error),
            ..base.clone()
        }
    }
}

/// An error with its causes, which HTTP and gRPC errors keep out of their own message
/// ("error sending request" says nothing of the refused connection behind it).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = e.source();
    }
    text
}

/// Numbers operations and writes each event to the history file, then to `out`.
struct Recorder<W> {
    worker: u32,
    next_op: u64,
    log: Log,
    out: W,
}

impl<W: Write> Recorder<W> {
    /// The number the next operation will get.
    fn next_op_id(&self) -> u64 {
        self.next_op + 1
    }

    fn invoke(&mut self, f: OpKind, fields: Fields) -> anyhow::Result<Op> {
        self.next_op += 1;
        let op = Op {
            id: self.next_op,
            f,
        };
        self.record(op, EventType::Invoke, fields)?;
        Ok(op)
    }

    fn ok(&mut self, op: Op, fields: Fields) -> anyhow::Result<()> {
        self.complete(op, EventType::Ok, fields)
    }

    fn fail(&mut self, op: Op, fields: Fields) -> anyhow::Result<()> {
        self.complete(op, EventType::Fail, fields)
    }

    fn complete(&mut self, op: Op, kind: EventType, fields: Fields) -> anyhow::Result<()> {
        self.record(op, kind, fields)
    }

    fn record(&mut self, op: Op, kind: EventType, fields: Fields) -> anyhow::Result<()> {
        let event = Event {
            worker: self.worker,
            op: op.id,
            kind,
            f: op.f,
            mono_ns: mono_ns(),
            wall_ms: wall_ms(),
            lease: fields.lease,
            token: fields.token,
            value: fields.value,
            element: fields.element,
            set: fields.set,
            stale: fields.stale,
            current: fields.current,
            error: fields.error,
        };
        self.log.append(&event)?;
        // The checker may have stopped reading (it is ending the run): the history file,
        // written first, is what counts.
        let _ = serde_json::to_writer(&mut self.out, &event);
        let _ = self.out.write_all(b"\n");
        let _ = self.out.flush();
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Op {
    id: u64,
    f: OpKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: StatusCode, error: &str) -> ClientError {
        ClientError::Server {
            status,
            error: error.into(),
            message: "…".into(),
        }
    }

    #[test]
    fn a_storage_5xx_is_unknown_but_busy_and_refusals_are_definite() {
        let failed_commit = answered(StatusCode::SERVICE_UNAVAILABLE, "store_failed");
        assert_eq!(outcome(&failed_commit), EventType::Info);
        let internal = answered(StatusCode::INTERNAL_SERVER_ERROR, "unexpected_answer");
        assert_eq!(outcome(&internal), EventType::Info);
        let busy = answered(StatusCode::SERVICE_UNAVAILABLE, BUSY);
        assert_eq!(outcome(&busy), EventType::Fail);
        let bad = answered(StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(outcome(&bad), EventType::Fail);
        let seed_refusal = answered(StatusCode::OK, "refused");
        assert_eq!(outcome(&seed_refusal), EventType::Fail);
        let stale = ClientError::StaleToken {
            fence: "/lock".into(),
            presented: FencingToken::new(5).unwrap(),
            current: FencingToken::new(6).unwrap(),
        };
        assert_eq!(outcome(&stale), EventType::Fail);
        let wrong_fence = ClientError::WrongFence {
            key: "counter".into(),
            fence: Some("/other".into()),
            requested: Some("/lock".into()),
        };
        assert_eq!(outcome(&wrong_fence), EventType::Fail);
    }

    #[tokio::test]
    async fn work_counts_from_the_read_so_a_worker_frozen_past_it_writes_at_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let range = (Duration::from_secs(10), Duration::from_secs(20));
        // Answered 20 s ago, as if frozen since: nothing of the work is left.
        let read_at = Instant::now() - Duration::from_secs(20);
        let over = tokio::time::timeout(Duration::from_secs(5), work(range, &mut rng, read_at));
        assert!(over.await.is_ok(), "work went on after its end");
        // Answered now: all of the work, 10 s at least, is still to run.
        let read_at = Instant::now();
        let running =
            tokio::time::timeout(Duration::from_millis(50), work(range, &mut rng, read_at));
        assert!(
            running.await.is_err(),
            "work ended before its shortest time"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_definite_and_a_request_left_unanswered_is_unknown() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let refused = fencelock::storage::http_client_builder(&Default::default())
            .unwrap()
            .build()
            .unwrap()
            .get(format!("http://{closed_addr}/"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(outcome(&ClientError::Http(refused)), EventType::Fail);

        // Accepts the connection and never answers: the request was sent.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                open.push(stream);
            }
        });
        let http = fencelock::storage::http_client_builder(&Default::default())
            .unwrap()
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let unanswered = http
            .put(format!("http://{silent_addr}/v1/kv/counter"))
            .body("1")
            .send()
            .await
            .unwrap_err();
        assert_eq!(outcome(&ClientError::Http(unanswered)), EventType::Info);
    }
}
