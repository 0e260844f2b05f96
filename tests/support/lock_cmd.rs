//! `fencelock lock` as a child process: a holder whose JSON events the test reads and which
//! it releases with SIGTERM, and a run expected to fail with one readable line.

use std::io::{BufRead, BufReader};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::proc::{ChildGuard, Signal, exit_and_stderr, fencelock_bin};
use fencelock::FencingToken;
use fencelock::process::NetHost;
use serde_json::Value;

/// The lease TTL every `fencelock lock` started here asks for.
pub const TTL: Duration = Duration::from_secs(2);

/// A `fencelock lock` child and the JSON lines it prints.
pub struct Holder {
    pub child: ChildGuard,
    /// Kept open: `fencelock lock` lets go at EOF.
    pub stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
}

impl Holder {
    pub fn spawn(endpoints: &[String], name: &str) -> Holder {
        Self::spawn_with(name, &[format!("--endpoints={}", endpoints.join(","))], &[])
    }

    /// `fencelock lock NAME --ttl 2 <args>` with `envs` added to its environment.
    pub fn spawn_with(name: &str, args: &[String], envs: &[(&str, String)]) -> Holder {
        let mut cmd = Command::new(fencelock_bin());
        cmd.envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
        Self::spawn_command(name, args, cmd)
    }

    /// Like [`Holder::spawn`], inside `host` of a test network.
    pub fn spawn_in(host: &NetHost, endpoints: &[String], name: &str) -> Holder {
        let cmd = host
            .command(fencelock_bin())
            .unwrap_or_else(|e| panic!("cannot start fencelock lock in {}: {e}", host.netns()));
        Self::spawn_command(name, &[format!("--endpoints={}", endpoints.join(","))], cmd)
    }

    fn spawn_command(name: &str, args: &[String], mut cmd: Command) -> Holder {
        cmd.args(["lock", name, "--ttl", &TTL.as_secs().to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // Dies with the test even if the test is killed: a holder left inside a test
        // network's namespace would keep that namespace alive.
        fencelock::process::die_with_parent(&mut cmd);
        let mut child = ChildGuard::spawn(format!("fencelock lock {name}"), &mut cmd);
        let stdin = child.child_mut().stdin.take();
        let stdout = child.child_mut().stdout.take().expect("piped stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        Holder {
            child,
            stdin,
            events,
        }
    }

    /// The next event, which must be `kind`, within `within`.
    pub fn expect(&self, kind: &str, within: Duration) -> Value {
        let event = self
            .events
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no {kind:?} event within {within:?}"));
        assert_eq!(event["event"], kind, "{event}");
        event
    }

    /// Sends `signal` to the holder process (e.g. `Signal::STOP` to freeze it).
    pub fn signal(&self, signal: Signal) {
        self.child.signal(signal);
    }

    /// SIGTERM while holding: it releases the lock and exits 0.
    pub fn release(mut self) {
        self.child.signal(Signal::TERM);
        self.expect("released", Duration::from_secs(10));
        let status = self.child.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "released and exited 0: {status}");
    }

    pub fn token(event: &Value) -> FencingToken {
        serde_json::from_value(event["token"].clone()).expect("a token")
    }
}

/// Runs `fencelock lock NAME` expected to fail: its exit status and stderr. Its stdin stays
/// open (at EOF it would stop before trying), and its log is kept to warnings.
pub fn refused(name: &str, args: &[String]) -> (Option<i32>, String) {
    let mut cmd = Command::new(fencelock_bin());
    cmd.args(["lock", name, "--ttl", &TTL.as_secs().to_string()])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    exit_and_stderr(
        format!("fencelock lock {name}"),
        &mut cmd,
        Duration::from_secs(30),
    )
}
