//! `fencelock demo`: the seed's walkthrough, automated, with a real process freeze.
//!
//! The demo starts a lock service (an embedded lockd, or a real etcd given by its endpoints)
//! and a storage server per scenario in this process, each on a free loopback port with
//! temporary data, then plays the expired-lease story twice with two real `fencelock client`
//! processes: once against storage that checks fencing tokens (`strict`) and once against
//! storage that checks nothing (`off`). It ends with a side-by-side summary and a timeline,
//! drawn in the terminal and written as an SVG picture.
//!
//! - [`client`]: the `fencelock client 1|2` command, the two actors of the story.
//! - `scenario`: one run of the story, and how the demo watches and steers its clients.
//! - [`timeline`]: the summary, the terminal timeline and the SVG.
//!
//! Invariants: every run uses fresh data and a lock name of its own, so tokens and fences
//! of earlier runs never meet this one; every server and child process the demo starts is
//! stopped before [`run`] returns (children are also killed if the demo dies).

pub mod client;
pub mod resource;
mod scenario;
pub mod timeline;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use fencelock::lock::Client;
use fencelock::lockd;
use fencelock::storage::{self, Engine, Policy};

pub use scenario::{Scenario, WriteOutcome};

/// What the demo runs against and where it puts its picture.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// A lock service to use instead of the embedded lockd (etcd endpoints).
    pub endpoints: Option<Vec<String>>,
    /// The TTL the clients ask for; the lock service may grant more.
    pub ttl: Duration,
    /// Directory for `demo-timeline.svg`.
    pub out_dir: PathBuf,
    /// Print only the machine-readable result.
    pub json: bool,
    /// The `fencelock` binary the clients run as.
    pub client_bin: PathBuf,
    /// How the demo itself connects to the lock service (TLS, credentials).
    pub connect: fencelock::lock::ConnectOptions,
    /// The same for the client processes, as etcdctl's environment variables.
    pub client_env: Vec<(&'static str, std::ffi::OsString)>,
    /// Where the clients write.
    pub resource: resource::Resource,
    /// For `Resource::Postgres`: the user's database; `None` starts a private PostgreSQL.
    pub database_url: Option<String>,
}

/// The file name of the timeline picture in [`DemoOptions::out_dir`].
pub const SVG_NAME: &str = "demo-timeline.svg";

/// What the demo found: the `--json` output.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `lockd` (embedded) or `etcd`.
    pub lock_service: String,
    /// Where the clients wrote: `storage`, `postgres` or `etcd`.
    pub resource: resource::Resource,
    pub endpoints: Vec<String>,
    pub ttl_requested_s: u64,
    /// With fencing (`strict`) first, then without (`off`).
    pub scenarios: Vec<Scenario>,
    /// The claim of the demo: with fencing, the stale write was rejected, client 2's write
    /// was accepted and its value is the one stored.
    pub fencing_rejected_stale_write: bool,
    /// Without fencing, the stale write was accepted and overwrote client 2's value.
    pub unfenced_stale_write_overwrote: bool,
    pub svg: PathBuf,
    pub took_ms: f64,
}

/// Runs the demo, narrating on `out` (or printing the JSON report there with `json`).
pub async fn run(options: &DemoOptions, out: &mut impl Write) -> anyhow::Result<Report> {
    let started = Instant::now();
    // Made (or found unusable) before the scenarios run, not after.
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("cannot create {} (--out)", options.out_dir.display()))?;
    let data = tempfile::Builder::new()
        .prefix("fencelock-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let mut servers = Servers::default();
    let (endpoints, lock_service) = match &options.endpoints {
        Some(endpoints) => (endpoints.clone(), "etcd"),
        None => {
            let dir = data.path().join("lockd");
            (vec![servers.lockd(dir).await?], "lockd")
        }
    };
    let client = Client::connect_with(&endpoints, &options.connect)
        .await
        .context("cannot reach the lock service")?;
    let mut say = Narrator {
        out,
        quiet: options.json,
    };
    say.line(&format!(
        "lock service: {} on {}",
        if lock_service == "lockd" {
            "embedded lockd (temporary data)"
        } else {
            "etcd"
        },
        endpoints.join(",")
    ));
    // Started here when the clients write to PostgreSQL and no database was given; removed
    // at the end with its data.
    let mut private_postgres = None;
    let database_url = match (options.resource, &options.database_url) {
        (resource::Resource::Postgres, Some(url)) => Some(url.clone()),
        (resource::Resource::Postgres, None) => {
            let server = fencelock::process::PostgresServer::start()
                .await
                .context("cannot start a private PostgreSQL (or give --database-url)")?;
            let url = server.url();
            say.line(&format!(
                "PostgreSQL: a private server on {url} (temporary data)"
            ));
            private_postgres = Some(server);
            Some(url)
        }
        _ => None,
    };

    let mut scenarios = Vec::new();
    for (n, policy) in [Policy::Strict, Policy::Off].into_iter().enumerate() {
        let url = match options.resource {
            resource::Resource::Storage => {
                let dir = data.path().join(format!("storage-{policy}"));
                servers.storage(dir, policy).await?
            }
            resource::Resource::Postgres | resource::Resource::Etcd => String::new(),
        };
        let setup = scenario::Setup {
            client_bin: &options.client_bin,
            client_env: &options.client_env,
            endpoints: &endpoints,
            client: &client,
            storage: &url,
            resource: options.resource,
            database_url: database_url.as_deref(),
            fencing: policy,
            lock: format!("/fencelock-demo/{}-{}", std::process::id(), n + 1),
            key: "key0".into(),
            ttl: options.ttl,
        };
        say.blank();
        let heading = match options.resource {
            resource::Resource::Storage => format!("storage on {url} with --fencing {policy}"),
            resource::Resource::Postgres => format!(
                "PostgreSQL table {}, {}",
                resource::TABLE,
                if policy == Policy::Off {
                    "plain upserts"
                } else {
                    "fenced transactions"
                }
            ),
            resource::Resource::Etcd => format!(
                "the key in the lock service, {}",
                if policy == Policy::Off {
                    "plain puts"
                } else {
                    "Txns on the lock key"
                }
            ),
        };
        say.line(&format!("== {}: {heading} ==", timeline::title(policy)));
        let result = scenario::play(&setup, &mut |line| say.line(line)).await;
        scenarios.push(result.with_context(|| format!("the scenario with --fencing {policy}"))?);
    }
    servers.stop().await;
    drop(private_postgres);

    let fenced = scenarios.iter().find(|s| s.fencing == "strict");
    let unfenced = scenarios.iter().find(|s| s.fencing == "off");
    let svg = options.out_dir.join(SVG_NAME);
    let report = Report {
        lock_service: lock_service.into(),
        resource: options.resource,
        endpoints,
        ttl_requested_s: options.ttl.as_secs(),
        fencing_rejected_stale_write: fenced.is_some_and(|s| {
            s.client1.write == WriteOutcome::Stale
                && s.client2.write == WriteOutcome::Accepted
                && s.final_value.as_deref() == Some(s.client2.value.as_str())
        }),
        unfenced_stale_write_overwrote: unfenced.is_some_and(|s| {
            s.client1.write == WriteOutcome::Accepted
                && s.final_value.as_deref() == Some(s.client1.value.as_str())
        }),
        scenarios,
        svg: svg.clone(),
        took_ms: millis(started.elapsed()),
    };
    std::fs::write(&svg, timeline::svg(&report))
        .with_context(|| format!("cannot write {}", svg.display()))?;

    if options.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        say.blank();
        say.text(&timeline::summary(&report));
        say.blank();
        say.text(&timeline::terminal(&report));
        say.blank();
        say.line(&format!(
            "timeline picture: {} (took {:.1} s)",
            svg.display(),
            report.took_ms / 1000.0
        ));
        say.line(if report.fencing_rejected_stale_write {
            "fencing held: the paused client's stale write was rejected"
        } else {
            "FENCING DID NOT REJECT THE STALE WRITE"
        });
    }
    Ok(report)
}

/// Milliseconds, to a tenth, for the report.
/// The machine's wall clock in microseconds since the Unix epoch: the one clock the demo and
/// its client processes share.
pub(crate) fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The story as it happens, for people; nothing with `--json`.
struct Narrator<'a, W: Write> {
    out: &'a mut W,
    quiet: bool,
}

impl<W: Write> Narrator<'_, W> {
    fn line(&mut self, line: &str) {
        if !self.quiet {
            // The narration is a courtesy: a closed terminal must not stop the demo from
            // cleaning up after itself.
            let _ = writeln!(self.out, "{line}").and_then(|()| self.out.flush());
        }
    }

    fn text(&mut self, text: &str) {
        if !self.quiet {
            let _ = write!(self.out, "{text}").and_then(|()| self.out.flush());
        }
    }

    fn blank(&mut self) {
        self.line("");
    }
}

/// The servers the demo runs in this process, each stopped by its own shutdown signal.
#[derive(Default)]
struct Servers {
    running: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Servers {
    /// Starts lockd with its data in `dir`; returns its endpoint.
    async fn lockd(&mut self, dir: PathBuf) -> anyhow::Result<String> {
        let config = lockd::Config {
            data_dir: Some(dir),
            ..Default::default()
        };
        let server = lockd::Server::open(&config).context("cannot start lockd")?;
        let (listener, addr) = loopback().await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = server.serve(listener, stopped_future(stopped)).await {
                tracing::error!("the demo's lockd failed: {e}");
            }
        });
        self.running.push((stop, task));
        Ok(addr.to_string())
    }

    /// Starts a durable storage with its data in `dir` and the fence `policy`; returns its URL.
    async fn storage(&mut self, dir: PathBuf, policy: Policy) -> anyhow::Result<String> {
        let config = storage::Config {
            engine: Engine::durable(dir),
            policy,
            limits: storage::Limits::default(),
            tls: None,
            auth: None,
        };
        let server = storage::Server::open(config)
            .await
            .context("cannot start the storage")?;
        let (listener, addr) = loopback().await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = server.serve(listener, stopped_future(stopped)).await {
                tracing::error!("the demo's storage failed: {e}");
            }
        });
        self.running.push((stop, task));
        Ok(format!("http://{addr}"))
    }

    /// Stops every server and waits until each has closed its data.
    async fn stop(&mut self) {
        for (stop, task) in self.running.drain(..).rev() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

async fn stopped_future(stopped: oneshot::Receiver<()>) {
    // A dropped sender (the demo failed) stops the server as well.
    let _ = stopped.await;
}

/// A listener on a free loopback port.
async fn loopback() -> anyhow::Result<(TcpListener, std::net::SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
