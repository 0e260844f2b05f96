//! A real etcd cluster, on loopback or on the hosts of a [`TestNet`](super::TestNet), started,
//! faulted and stopped by this process.
//!
//! Used by the tests, the benchmark and any command that needs etcd without asking the user
//! to run one. Invariants:
//! - By default members listen on 127.0.0.1 only, on ports that were free when chosen. Given
//!   hosts ([`EtcdOptions::hosts`]), each member runs inside its host's network namespace and
//!   listens on that host's address only, on etcd's own ports (2379, 2380: the namespace is
//!   the member's alone), and is reached, checked included, from inside the network only.
//! - Data lives in a temporary directory removed on drop.
//! - `start` returns only once every member answers a linearizable read, i.e. the cluster
//!   has a leader and a quorum.
//! - Every member process is killed and reaped when the cluster is dropped, also if it was
//!   paused (SIGSTOP) and also when a test panics; the kernel kills the members if this
//!   process dies without dropping it (they are started with a parent-death signal). Only
//!   processes started here are signalled, by their own PID.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::{NetError, NetHost, Signal};
use crate::lock::{Client, ConnectOptions, TlsOptions};

/// Raft heartbeat for loopback members. etcd's default (100 ms) is sized for real networks;
/// on loopback 50 ms elects a leader twice as fast and still leaves room on a busy 2-core
/// machine. Both flags exist in etcd 3.4 and 3.5.
const HEARTBEAT_MS: u32 = 50;
/// Election timeout: etcd wants at least 5 heartbeats; 10 keeps spurious elections rare
/// under load. It also sets etcd's minimum lease TTL: ceil(1.5 × 500 ms) = 1 s.
const ELECTION_MS: u32 = 500;

/// How long a cluster may take to elect a leader and answer reads.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Client and peer ports of a member on a host of its own: etcd's defaults, free by
/// construction in a namespace that holds nothing else.
const HOST_PORTS: (u16, u16) = (2379, 2380);

/// Attempts with fresh ports when a member cannot bind: a "free" port can be taken by
/// another process between choosing it and etcd binding it.
const START_ATTEMPTS: usize = 3;

/// Errors starting or restarting etcd.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The etcd binary could not be started.
    #[error("cannot run {binary}")]
    Spawn {
        /// The binary as given.
        binary: String,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// A member exited while the cluster was starting.
    #[error("etcd member {name} exited during start-up; its log ends with:\n{log_tail}")]
    Exited {
        /// The member's name (`m0`, `m1`, ...).
        name: String,
        /// The end of the member's log.
        log_tail: String,
    },
    /// A member did not answer a linearizable read in time.
    #[error("etcd member {name} did not become healthy within {timeout:?}: {detail}")]
    Unhealthy {
        /// The member's name.
        name: String,
        /// How long it was given.
        timeout: Duration,
        /// The last answer (or its absence) to the health read.
        detail: String,
    },
    /// The data directory, its logs or the ports could not be prepared.
    #[error("cannot prepare etcd's data directory or ports")]
    Io(#[from] std::io::Error),
    /// [`EtcdOptions::hosts`] names a host count other than the member count.
    #[error("{members} members need {members} hosts, not {hosts}")]
    Hosts {
        /// Members asked for.
        members: usize,
        /// Hosts given.
        hosts: usize,
    },
    /// A member could not be started inside its host, or checked from there.
    #[error("cannot place an etcd member in its network namespace")]
    Net(#[from] NetError),
}

/// One etcd process of the cluster.
struct Member {
    name: String,
    /// Where it listens: 127.0.0.1, or its host's address.
    ip: std::net::Ipv4Addr,
    client_port: u16,
    /// Its host when it runs in a test network's namespace.
    host: Option<NetHost>,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
}

/// TLS for a cluster's client port: the members' certificate and key, and the authority
/// whose client certificates they require (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The members' certificate (PEM), valid for 127.0.0.1.
    pub cert_file: PathBuf,
    /// Its key (PEM).
    pub key_file: PathBuf,
    /// The authority (PEM) that signs the clients' certificates.
    pub trusted_ca_file: PathBuf,
    /// How this process itself connects to check the members: a CA that trusts their
    /// certificate and a client certificate the members accept.
    pub client: TlsOptions,
}

/// How to start a cluster beyond its size: TLS on the client port, etcd flags of the
/// caller's (e.g. `--auth-token-ttl`), and where the members run.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Mutual TLS on the client port (with [`EtcdOptions::hosts`], the certificate must be
    /// valid for the hosts' addresses).
    pub tls: Option<ServerTls>,
    /// More flags for every member.
    pub args: Vec<String>,
    /// Empty (the default): every member on loopback. Otherwise one host per member, member
    /// `i` inside `hosts[i]` on its address; endpoints are then reachable only from inside
    /// that test network (e.g. from [`NetHost::run`] or a process started in a host).
    pub hosts: Vec<NetHost>,
}

/// A running etcd cluster owned by this process, on loopback or on the hosts of a test network.
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    tls: Option<ServerTls>,
    // Removed after the members are killed (fields drop in order).
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `members` etcd members from `binary` (a path or a name on PATH) and waits until
    /// the cluster answers reads.
    pub async fn start(members: usize, binary: impl Into<PathBuf>) -> Result<Self, ClusterError> {
        Self::start_with(members, binary, EtcdOptions::default()).await
    }

    /// Like [`EtcdCluster::start`], with `options`: behind mutual TLS when `options.tls` is
    /// given (endpoints are then `https://` and every client needs a certificate), and with
    /// the extra flags.
    pub async fn start_with(
        members: usize,
        binary: impl Into<PathBuf>,
        options: EtcdOptions,
    ) -> Result<Self, ClusterError> {
        let binary = binary.into();
        let mut attempt = 1;
        loop {
            let mut cluster = Self::spawn(members, &binary, &options)?;
            match cluster.wait_started().await {
                Ok(()) => return Ok(cluster),
                Err(StartFailure::PortTaken) if attempt < START_ATTEMPTS => {
                    tracing::debug!(attempt, "an etcd port was taken; retrying with new ports");
                    attempt += 1;
                }
                Err(StartFailure::PortTaken) => {
                    return Err(ClusterError::Exited {
                        name: "etcd".into(),
                        log_tail: "address already in use, on every attempt".into(),
                    });
                }
                Err(StartFailure::Other(e)) => return Err(e),
            }
        }
    }

    fn spawn(members: usize, binary: &Path, options: &EtcdOptions) -> Result<Self, ClusterError> {
        let tls = options.tls.clone();
        if !options.hosts.is_empty() && options.hosts.len() != members {
            return Err(ClusterError::Hosts {
                members,
                hosts: options.hosts.len(),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("fencelock-etcd-")
            .tempdir()?;
        // (address, client port, peer port) per member.
        let places: Vec<(std::net::Ipv4Addr, u16, u16)> = if options.hosts.is_empty() {
            let ports = super::free_ports(2 * members)?;
            (0..members)
                .map(|i| {
                    (
                        std::net::Ipv4Addr::LOCALHOST,
                        ports[2 * i],
                        ports[2 * i + 1],
                    )
                })
                .collect()
        } else {
            let (client, peer) = HOST_PORTS;
            options
                .hosts
                .iter()
                .map(|h| (h.addr(), client, peer))
                .collect()
        };
        let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
        let peer_url = |i: usize| format!("http://{}:{}", places[i].0, places[i].2);
        let initial_cluster = names
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{name}={}", peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        // A token unique to this cluster, so members of two test clusters never join up.
        let token = format!(
            "fencelock-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        let tls_args: Vec<OsString> = tls.as_ref().map_or_else(Vec::new, |tls| {
            vec![
                "--cert-file".into(),
                tls.cert_file.clone().into_os_string(),
                "--key-file".into(),
                tls.key_file.clone().into_os_string(),
                "--trusted-ca-file".into(),
                tls.trusted_ca_file.clone().into_os_string(),
                "--client-cert-auth".into(),
            ]
        });
        let mut cluster = EtcdCluster {
            binary: binary.to_path_buf(),
            members: Vec::with_capacity(members),
            tls,
            dir,
        };
        for (i, name) in names.iter().enumerate() {
            let (ip, client_port, _) = places[i];
            let client_url = format!("{scheme}://{ip}:{client_port}");
            let data_dir = cluster.dir.path().join(format!("{name}.etcd"));
            let args: Vec<OsString> = [
                "--name",
                name,
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url(i),
                "--initial-advertise-peer-urls",
                &peer_url(i),
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                &HEARTBEAT_MS.to_string(),
                "--election-timeout",
                &ELECTION_MS.to_string(),
                "--logger",
                "zap",
                "--log-level",
                "warn",
                "--data-dir",
            ]
            .iter()
            .map(OsString::from)
            .chain([data_dir.into_os_string()])
            .chain(tls_args.iter().cloned())
            .chain(options.args.iter().map(OsString::from))
            .collect();
            let mut member = Member {
                name: name.clone(),
                ip,
                client_port,
                host: options.hosts.get(i).cloned(),
                args,
                log: cluster.dir.path().join(format!("{name}.log")),
                child: None,
            };
            member.spawn(&cluster.binary)?;
            cluster.members.push(member);
        }
        Ok(cluster)
    }

    async fn wait_started(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + START_TIMEOUT;
        for i in 0..self.members.len() {
            self.wait_member_healthy(i, deadline).await?;
        }
        tracing::debug!(members = self.members.len(), "etcd cluster started");
        Ok(())
    }

    async fn wait_member_healthy(
        &mut self,
        i: usize,
        deadline: Instant,
    ) -> Result<(), StartFailure> {
        let endpoint = self.endpoint(i);
        loop {
            let member = &mut self.members[i];
            if let Some(child) = member.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                member.child = None;
                let log_tail = member.log_tail();
                if log_tail.contains("address already in use") {
                    return Err(StartFailure::PortTaken);
                }
                return Err(StartFailure::Other(ClusterError::Exited {
                    name: member.name.clone(),
                    log_tail,
                }));
            }
            let tls = self.tls.as_ref().map(|t| t.client.clone());
            let answer = match member.host.clone() {
                None => member_answers(&endpoint, tls).await,
                // Its address is reachable only from inside the test network: ask from the
                // member's own host.
                Some(host) => {
                    let endpoint = endpoint.clone();
                    host.run(move || async move { member_answers(&endpoint, tls).await })
                        .await
                        .map_err(ClusterError::from)?
                }
            };
            let detail = match answer {
                Ok(()) => return Ok(()),
                Err(detail) => detail,
            };
            if Instant::now() >= deadline {
                return Err(StartFailure::Other(ClusterError::Unhealthy {
                    name: member.name.clone(),
                    timeout: START_TIMEOUT,
                    detail,
                }));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Client endpoints (`127.0.0.1:port`, or `https://127.0.0.1:port` behind TLS; the host's
    /// address instead of 127.0.0.1 on a test network), one per member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Client endpoint of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        let Member {
            ip, client_port, ..
        } = &self.members[i];
        match self.tls {
            Some(_) => format!("https://{ip}:{client_port}"),
            None => format!("{ip}:{client_port}"),
        }
    }

    /// The host member `i` runs in, on a test network.
    pub fn host(&self, i: usize) -> Option<&NetHost> {
        self.members[i].host.as_ref()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// PID of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Stops member `i` with SIGTERM, waiting up to 10 s before resorting to SIGKILL.
    pub async fn stop(&mut self, i: usize) {
        let member = &mut self.members[i];
        if member.signal(Signal::TERM) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(child) = member.child.as_mut()
                    && let Ok(Some(_)) = child.try_wait()
                {
                    member.child = None;
                    return;
                }
                sleep(Duration::from_millis(20)).await;
            }
        }
        member.kill();
    }

    /// Freezes member `i` (SIGSTOP) and returns once the kernel shows it stopped: it keeps
    /// its sockets but answers nothing.
    pub fn pause(&self, i: usize) {
        if let Some(child) = &self.members[i].child {
            super::freeze(child.id());
        }
    }

    /// Resumes a paused member `i` (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.members[i].signal(Signal::CONT);
    }

    /// Starts a stopped or killed member `i` again on its data directory and ports, and waits
    /// until it answers reads.
    pub async fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        self.members[i].kill();
        self.members[i].spawn(&self.binary)?;
        match self
            .wait_member_healthy(i, Instant::now() + START_TIMEOUT)
            .await
        {
            Ok(()) => Ok(()),
            Err(StartFailure::Other(e)) => Err(e),
            Err(StartFailure::PortTaken) => Err(ClusterError::Exited {
                name: self.members[i].name.clone(),
                log_tail: "its port was taken while it was down".into(),
            }),
        }
    }

    /// Where member `i` writes its log.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.members[i].log
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

impl Member {
    fn spawn(&mut self, binary: &Path) -> Result<(), ClusterError> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let mut command = Command::new(binary);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // If this process dies without dropping the cluster (SIGKILL, an unhandled SIGINT),
        // the kernel kills the members too instead of leaving them running. (Linux ties the
        // signal to the thread that started the member: a runtime's worker or main thread,
        // which lives as long as the cluster.)
        super::die_with_parent(&mut command);
        if let Some(host) = &self.host {
            host.enter(&mut command)?;
        }
        let child = command.spawn().map_err(|source| ClusterError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Sends `signal` if the member runs; false if it does not.
    fn signal(&self, signal: Signal) -> bool {
        // Our own child, not reaped while we hold it, so its PID names no other process.
        self.child
            .as_ref()
            .is_some_and(|child| super::send_signal(child.id(), signal))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process acts on SIGKILL too, but continuing it first lets it be
            // reaped promptly on every kernel.
            super::send_signal(child.id(), Signal::CONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        super::log_tail(&self.log, 0)
    }
}

enum StartFailure {
    PortTaken,
    Other(ClusterError),
}

impl From<ClusterError> for StartFailure {
    fn from(e: ClusterError) -> Self {
        StartFailure::Other(e)
    }
}

/// Ok once `endpoint` serves a linearizable read (it has a leader and a quorum).
async fn member_answers(endpoint: &str, tls: Option<TlsOptions>) -> Result<(), String> {
    let options = ConnectOptions {
        timeout: Duration::from_secs(1),
        tls,
        ..ConnectOptions::default()
    };
    let client = Client::connect_with([endpoint], &options)
        .await
        .map_err(|e| e.to_string())?;
    let read = crate::etcd::etcdserverpb::RangeRequest {
        key: b"health".to_vec(),
        ..Default::default()
    };
    match tokio::time::timeout(Duration::from_secs(1), client.kv().range(read)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err("no answer to a read within 1 s".into()),
    }
}
