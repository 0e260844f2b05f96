//! A private test network of Linux network namespaces, for faults a loopback cannot give: a
//! bridge and N hosts, each host a namespace of its own on the bridge, and links between
//! hosts cut and healed at will ([`TestNet`]).
//!
//! Layout of one run (`<id>` is this process's PID and a counter, so parallel tests and
//! parallel test binaries never collide):
//!
//! ```text
//!   netns fencelock-net-<id>-br          netns fencelock-net-<id>-h0 ... -h<N-1>
//!   +----------------------------+       +--------------------------------------+
//!   | br0 (bridge, no address)   |       | eth0  10.77.<run>.<i+1>/24           |
//!   |   v0 v1 ... v<N-1>  <---------veth--->    nft table inet fencelock:       |
//!   +----------------------------+       |      input: ip saddr @blocked drop   |
//!                                        +--------------------------------------+
//! ```
//!
//! Invariants:
//! - Nothing is created in, or routed to, the root namespace: the bridge lives in a namespace
//!   of its own, and each veth pair is created there with its peer placed directly in its
//!   host's namespace. Interface names (`br0`, `v<i>`, `eth0`) therefore need to be unique
//!   only inside one namespace; the namespaces carry the run's unique names. The hosts have
//!   no default route, so the only addresses they can reach are the run's own.
//! - Every address is on the run's test subnet, inside namespaces this run created. The
//!   third octet is the run's counter; two processes may use the same subnet, which is
//!   harmless, as their bridges never meet.
//! - Dropping a [`TestNet`] deletes every namespace of its run, which takes the veths, the
//!   bridge and the nftables rules with them; it runs during a panic's unwinding too. A run
//!   whose process died without dropping (SIGKILL) is removed by [`TestNet::cleanup_stale`],
//!   which [`TestNet::new`] calls first: it deletes only namespaces whose names carry the
//!   prefix and the PID of a process that no longer exists.
//! - Drop a [`TestNet`] after the processes inside it: a namespace whose name is deleted lives
//!   on (unreachable by name) until its last process exits.
//!
//! Why nftables and not links taken down: a link down cuts a host from *everyone*, which is
//! [`TestNet::isolate`] but not [`TestNet::partition`] (each side must still reach its own,
//! e.g. a majority of etcd members and their clients). A set of blocked peer addresses in each
//! host's namespace expresses any partition, and a cut is one atomic ruleset change per host.
//! Packets are dropped on *input* only, and on both hosts of a cut pair, so traffic is cut in
//! both directions: dropping on output would make the sender's own kernel answer `send` with
//! EPERM at once, which no real partition does; dropped input makes connects and writes time
//! out, as they do when a network fails.
//!
//! Processes enter a host by `setns(2)` between fork and exec ([`NetHost::enter`]), not through
//! `ip netns exec`: the PID the caller holds is the program's own, and the program still gets
//! its parent-death signal from [`die_with_parent`](super::die_with_parent). Code of this
//! process runs in a host on a thread of its own ([`NetHost::run`], [`NetHost::run_sync`]):
//! the network namespace is per thread, and a socket stays in the namespace it was made in.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// The start of every namespace name a [`TestNet`] creates: `fencelock-net-<pid>-<run>-`.
pub const NETNS_PREFIX: &str = "fencelock-net-";

/// Where iproute2 keeps named namespaces (bind mounts of the namespace files).
const NETNS_DIR: &str = "/run/netns";

/// The first two octets of every test subnet: 10.77.<run>.0/24, inside RFC 1918 space that
/// no test ever routes.
const SUBNET_PREFIX: [u8; 2] = [10, 77];

/// Hosts per network: addresses .1 to .253 of a /24 (.254 and .255 stay unused).
const MAX_HOSTS: usize = 253;

/// How long veth links may take to report carrier after they are set up; milliseconds on an
/// idle machine, bounded generously for a loaded one.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// The nftables table each host carries, with the set of blocked peer addresses.
const NFT_TABLE: &str = "inet fencelock";

/// Runs of this process, for names and subnets unique per run.
static RUN: AtomicU32 = AtomicU32::new(0);

/// Why a test network could not be made, changed or entered. Each message is one line, so
/// a caller can refuse a fault with it.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Network namespaces, veths and nftables need root.
    #[error("network namespaces need root; this process runs as uid {uid}")]
    NotRoot {
        /// The effective user ID.
        uid: u32,
    },
    /// `ip` or `nft` cannot be run.
    #[error("`{tool}` not found; install the {package} package")]
    Missing {
        /// The program looked for.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A command that builds or changes the network failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output, on one line.
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A host's namespace could not be opened or entered.
    #[error("cannot enter network namespace {netns}")]
    Enter {
        /// The namespace's name.
        netns: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A host index that the network does not have.
    #[error("no host {host}: the network has {hosts}")]
    NoHost {
        /// The index asked for.
        host: usize,
        /// How many hosts there are.
        hosts: usize,
    },
    /// A partition named a host on both of its sides.
    #[error("host {0} is on both sides of the partition")]
    BothSides(usize),
    /// More hosts than one /24 holds, or none.
    #[error("a test network has 1 to {MAX_HOSTS} hosts, not {0}")]
    Size(usize),
    /// A host's link did not come up.
    #[error("the link of host {host} was not up within {LINK_UP_TIMEOUT:?}")]
    LinkDown {
        /// The host's index.
        host: usize,
    },
}

/// One host of a [`TestNet`]: a network namespace with one address on the test subnet.
///
/// A cheap handle (names and an address), cloned into whatever starts processes there, e.g.
/// `EtcdOptions::hosts`. It stays valid while its [`TestNet`] lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetHost {
    index: usize,
    netns: String,
    addr: Ipv4Addr,
}

impl NetHost {
    /// The host's index in its network.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The host's address on the test subnet.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The name of the host's network namespace (as `ip netns list` shows it).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn open(&self) -> Result<File, NetError> {
        File::open(format!("{NETNS_DIR}/{}", self.netns)).map_err(|source| NetError::Enter {
            netns: self.netns.clone(),
            source,
        })
    }

    /// Makes `command`'s child start inside this host's namespace. Combine it with
    /// [`die_with_parent`](super::die_with_parent) as with any other command; for a tokio
    /// command pass `command.as_std_mut()`. Fails now if the namespace is gone.
    pub fn enter<'c>(&self, command: &'c mut Command) -> Result<&'c mut Command, NetError> {
        // Opened here, in the parent: the child must not allocate or open files between fork
        // and exec. The descriptor is close-on-exec, so the program does not inherit it.
        let netns = self.open()?;
        // SAFETY: the hook runs between fork and exec and makes one system call, setns(2),
        // which is async-signal-safe and allocates nothing.
        Ok(unsafe {
            command.pre_exec(move || {
                move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(std::io::Error::from)
            })
        })
    }

    /// A [`Command`] for `program` that starts inside this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command, NetError> {
        let mut command = Command::new(program);
        self.enter(&mut command)?;
        Ok(command)
    }

    /// Runs `f` on a thread of its own inside this host and returns its result; a panic in
    /// `f` is resumed here. Sockets `f` creates stay in the host when returned, so this is
    /// also how to make a listener or a connection that lives in the host.
    pub fn run_sync<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
        let netns = self.open()?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                self.move_here(&netns)?;
                Ok(f())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs the future `f` makes on a thread of its own inside this host, on a runtime of
    /// its own (current-thread, with I/O and timers), and returns its output without blocking
    /// the caller's runtime; a panic in it is resumed here. For clients of servers in the
    /// network: the library's `Client` made inside `f` connects from this host.
    pub async fn run<F, Fut>(&self, f: F) -> Result<Fut::Output, NetError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future,
        Fut::Output: Send + 'static,
    {
        let netns = self.open()?;
        let host = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || -> Result<(), NetError> {
            host.move_here(&netns)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| NetError::Enter {
                    netns: host.netns.clone(),
                    source,
                })?;
            let _ = tx.send(runtime.block_on(f()));
            Ok(())
        });
        match rx.await {
            Ok(output) => Ok(output),
            // The thread ended without an answer: it failed to enter, or `f` panicked. It
            // has ended (the sender is gone), so joining does not block.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => unreachable!("the thread answers before it returns Ok"),
                Err(panic) => std::panic::resume_unwind(panic),
            },
        }
    }

    /// Moves the calling thread into this host's namespace.
    fn move_here(&self, netns: &File) -> Result<(), NetError> {
        move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network)).map_err(|e| {
            NetError::Enter {
                netns: self.netns.clone(),
                source: e.into(),
            }
        })
    }
}

/// A bridge and hosts in network namespaces for one run, with links cut and healed by
/// nftables; everything is removed on drop. See the module documentation for the layout.
///
/// Invariant: `blocked[h]` is exactly the set of hosts whose addresses host `h`'s nftables
/// set holds; every change goes through one private `apply`.
pub struct TestNet {
    /// `<pid>-<run>`.
    id: String,
    hosts: Vec<NetHost>,
    blocked: Mutex<Vec<BTreeSet<usize>>>,
}

impl TestNet {
    /// Whether test networks can be made here: root, `ip` and `nft`. The error is one line.
    pub fn available() -> Result<(), NetError> {
        let uid = rustix::process::geteuid().as_raw();
        if uid != 0 {
            return Err(NetError::NotRoot { uid });
        }
        for (tool, flag, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
            let runs = Command::new(tool)
                .arg(flag)
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if !runs {
                return Err(NetError::Missing { tool, package });
            }
        }
        Ok(())
    }

    /// Creates a network of `hosts` hosts on a bridge, every link up and nothing cut; first
    /// removes what earlier runs left behind ([`TestNet::cleanup_stale`]).
    pub fn new(hosts: usize) -> Result<Self, NetError> {
        Self::available()?;
        if hosts == 0 || hosts > MAX_HOSTS {
            return Err(NetError::Size(hosts));
        }
        if let Err(e) = Self::cleanup_stale() {
            tracing::warn!("cannot remove the test networks of earlier runs: {e}");
        }
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{run}", std::process::id());
        let octet = u8::try_from(run % 256).unwrap_or(0);
        let [a, b] = SUBNET_PREFIX;
        let net = TestNet {
            hosts: (0..hosts)
                .map(|index| NetHost {
                    index,
                    netns: format!("{NETNS_PREFIX}{id}-h{index}"),
                    // At most MAX_HOSTS (253), checked above, so index + 1 fits an octet.
                    addr: Ipv4Addr::new(a, b, octet, (index + 1) as u8),
                })
                .collect(),
            id,
            blocked: Mutex::new(vec![BTreeSet::new(); hosts]),
        };
        // From here on a failure drops `net`, which deletes whatever was made.
        net.build()?;
        tracing::debug!(id = %net.id, hosts, "test network up");
        Ok(net)
    }

    fn bridge_netns(&self) -> String {
        format!("{NETNS_PREFIX}{}-br", self.id)
    }

    fn build(&self) -> Result<(), NetError> {
        let bridge = self.bridge_netns();
        ip(&["netns", "add", &bridge])?;
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        for host in &self.hosts {
            let port = format!("v{}", host.index);
            let cidr = format!("{}/24", host.addr);
            ip(&["netns", "add", &host.netns])?;
            // Created in the bridge's namespace with its peer placed straight into the host's:
            // neither end ever exists in the root namespace.
            ip(&[
                "-n",
                &bridge,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ])?;
            ip(&["-n", &bridge, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &host.netns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
            nft(
                host,
                &format!(
                    "add table {NFT_TABLE}\n\
                     add set {NFT_TABLE} blocked {{ type ipv4_addr; }}\n\
                     add chain {NFT_TABLE} input {{ type filter hook input priority 0; policy accept; }}\n\
                     add rule {NFT_TABLE} input ip saddr @blocked drop\n"
                ),
            )?;
        }
        let deadline = Instant::now() + LINK_UP_TIMEOUT;
        for host in &self.hosts {
            loop {
                let shown = ip_output(&["-n", &host.netns, "-o", "link", "show", "eth0"])?;
                if shown.contains("LOWER_UP") && shown.contains("state UP") {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(NetError::LinkDown { host: host.index });
                }
                // Carrier comes within milliseconds; nothing to wait on but the link state.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    /// The hosts, in index order.
    pub fn hosts(&self) -> &[NetHost] {
        &self.hosts
    }

    /// Host `i`; panics if there is none (indexes come from the caller's own layout).
    pub fn host(&self, i: usize) -> &NetHost {
        &self.hosts[i]
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always false: a network has at least one host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The start of every namespace name of this run (`fencelock-net-<pid>-<run>-`), to look
    /// for its leftovers.
    pub fn netns_prefix(&self) -> String {
        format!("{NETNS_PREFIX}{}-", self.id)
    }

    /// Cuts `host` off from every other host, both directions. Adds to the cuts in place.
    pub fn isolate(&self, host: usize) -> Result<(), NetError> {
        self.check(host)?;
        let others: Vec<usize> = (0..self.len()).filter(|&h| h != host).collect();
        self.partition(&[host], &others)
    }

    /// Cuts every host of `a` off from every host of `b`, both directions; each side still
    /// reaches its own. Adds to the cuts in place (two partitions make both hold).
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<(), NetError> {
        for &h in a.iter().chain(b) {
            self.check(h)?;
        }
        if let Some(&h) = a.iter().find(|h| b.contains(h)) {
            return Err(NetError::BothSides(h));
        }
        let mut blocked = self.lock_blocked();
        let mut next = blocked.clone();
        for &x in a {
            for &y in b {
                next[x].insert(y);
                next[y].insert(x);
            }
        }
        self.apply(&mut blocked, next)
    }

    /// Removes every cut: all hosts reach each other again.
    pub fn heal(&self) -> Result<(), NetError> {
        let mut blocked = self.lock_blocked();
        let next = vec![BTreeSet::new(); self.len()];
        self.apply(&mut blocked, next)
    }

    /// The hosts that `host` cannot reach now, in index order.
    pub fn cut_off(&self, host: usize) -> Result<Vec<usize>, NetError> {
        self.check(host)?;
        Ok(self.lock_blocked()[host].iter().copied().collect())
    }

    fn check(&self, host: usize) -> Result<(), NetError> {
        if host < self.len() {
            Ok(())
        } else {
            Err(NetError::NoHost {
                host,
                hosts: self.len(),
            })
        }
    }

    fn lock_blocked(&self) -> std::sync::MutexGuard<'_, Vec<BTreeSet<usize>>> {
        // A panic while holding it left `blocked` as it was before or after one host's
        // change; either way it still names what the rules hold but for that host, and heal
        // or drop fixes the rest.
        self.blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes each host's nftables set hold `next[h]`, changing only the hosts whose set
    /// changes; each host's change is one atomic nft transaction.
    fn apply(
        &self,
        blocked: &mut [BTreeSet<usize>],
        next: Vec<BTreeSet<usize>>,
    ) -> Result<(), NetError> {
        for (h, set) in next.into_iter().enumerate() {
            if blocked[h] == set {
                continue;
            }
            let mut script = format!("flush set {NFT_TABLE} blocked\n");
            if !set.is_empty() {
                let addrs: Vec<String> = set
                    .iter()
                    .map(|&p| self.hosts[p].addr.to_string())
                    .collect();
                script += &format!(
                    "add element {NFT_TABLE} blocked {{ {} }}\n",
                    addrs.join(", ")
                );
            }
            nft(&self.hosts[h], &script)?;
            tracing::debug!(host = h, cut_off = ?set, "test network links changed");
            blocked[h] = set;
        }
        Ok(())
    }

    /// Deletes the namespaces (and with them the veths, bridges and rules) of runs whose
    /// process no longer exists, judged by the PID in their names; returns how many were
    /// deleted. Namespaces of live processes, this one included, are left alone.
    pub fn cleanup_stale() -> Result<usize, NetError> {
        let entries = match std::fs::read_dir(NETNS_DIR) {
            Ok(entries) => entries,
            // No namespace was ever named on this machine.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(NetError::Enter {
                    netns: NETNS_DIR.into(),
                    source,
                });
            }
        };
        let mut deleted = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            match ip(&["netns", "delete", &name]) {
                Ok(()) => {}
                // Another process cleaning up at the same moment deleted it first.
                Err(_) if !entry.path().exists() => continue,
                Err(e) => return Err(e),
            }
            tracing::debug!(netns = %name, pid, "removed a stale test namespace");
            deleted += 1;
        }
        Ok(deleted)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Hosts first: deleting a host's namespace destroys its veth end and with it the
        // peer on the bridge; then the bridge. Only names of this run, whatever was made.
        let names = self
            .hosts
            .iter()
            .map(|h| h.netns.clone())
            .chain([self.bridge_netns()]);
        for name in names {
            if std::path::Path::new(NETNS_DIR).join(&name).exists()
                && let Err(e) = ip(&["netns", "delete", &name])
            {
                tracing::warn!("cannot remove test namespace {name}: {e}");
            }
        }
    }
}

/// The PID in a namespace name of the form `fencelock-net-<pid>-<run>-<role>`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u32>().ok()?;
    parts.next()?;
    Some(pid)
}

/// Runs `ip args...`; an error carries its stderr on one line.
fn ip(args: &[&str]) -> Result<(), NetError> {
    ip_output(args).map(drop)
}

fn ip_output(args: &[&str]) -> Result<String, NetError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetError::Command {
            command,
            stderr: one_line(&output.stderr),
        })
    }
}

/// Runs `nft -f -` with `script` inside `host`: one atomic transaction.
fn nft(host: &NetHost, script: &str) -> Result<(), NetError> {
    let command = format!("nft -f - (in {}): {}", host.netns, script.trim());
    let spawn_error = |source| NetError::Spawn {
        command: command.replace('\n', "; "),
        source,
    };
    let mut child = host
        .command("nft")?
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means nft exited early; its status and stderr say why.
        let _ = stdin.write_all(script.as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command: command.replace('\n', "; "),
            stderr: one_line(&output.stderr),
        })
    }
}

fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_the_form_prefix_pid_run_role_have_an_owner() {
        assert_eq!(owner_pid("fencelock-net-4242-0-br"), Some(4242));
        assert_eq!(owner_pid("fencelock-net-4242-17-h3"), Some(4242));
        assert_eq!(owner_pid("fencelock-net-4242-17"), None);
        assert_eq!(owner_pid("fencelock-net-probe-1-h0"), None);
        assert_eq!(owner_pid("fencelock-net-12-x-h0"), None);
        assert_eq!(owner_pid("other-4242-0-br"), None);
    }

    #[test]
    fn refusals_are_one_line() {
        for e in [
            NetError::NotRoot { uid: 1000 },
            NetError::Missing {
                tool: "nft",
                package: "nftables",
            },
            NetError::Command {
                command: "ip netns add x".into(),
                stderr: one_line(b"first\n\nsecond\n"),
            },
        ] {
            let text = e.to_string();
            assert!(!text.contains('\n'), "{text:?}");
        }
        assert_eq!(one_line(b" a \n\n b\n"), "a; b");
    }
}
