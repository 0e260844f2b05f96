//! `fencelock lock` as a process of its own, against both lock services (`crate::support::backend`:
//! a real etcd from `crate::support::etcd`, and `fencelock lockd`): a holder the tests can freeze with
//! SIGSTOP, and its JSON events and exit statuses.

use crate::both_backends;

use std::io::{BufRead, BufReader};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::backend::Service;
use crate::support::etcd::within_ttl;
use crate::support::proc::{ChildGuard, Signal, fencelock_bin};
use fencelock::FencingToken;
use fencelock::lock::Client;
use serde_json::Value;
use tokio::time::{Instant, timeout};

const TTL: Duration = Duration::from_secs(2);

/// A `fencelock lock` child and the JSON lines it prints.
pub(crate) struct Holder {
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
}

impl Holder {
    fn spawn(endpoints: &[String], name: &str) -> Holder {
        Self::spawn_with(name, &[format!("--endpoints={}", endpoints.join(","))], &[])
    }

    /// `fencelock lock NAME --ttl 2 <args>` with `envs` added to its environment.
    pub(crate) fn spawn_with(name: &str, args: &[String], envs: &[(&str, String)]) -> Holder {
        let mut cmd = Command::new(fencelock_bin());
        cmd.args(["lock", name, "--ttl", &TTL.as_secs().to_string()])
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
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
    pub(crate) fn expect(&self, kind: &str, within: Duration) -> Value {
        let event = self
            .events
            .recv_timeout(within)
            .unwrap_or_else(|_| panic!("no {kind:?} event within {within:?}"));
        assert_eq!(event["event"], kind, "{event}");
        event
    }

    /// Sends `signal` to the holder process (e.g. `Signal::STOP` to freeze it).
    pub(crate) fn signal(&self, signal: Signal) {
        self.child.signal(signal);
    }

    /// SIGTERM while holding: it releases the lock and exits 0.
    pub(crate) fn release(mut self) {
        self.child.signal(Signal::TERM);
        self.expect("released", Duration::from_secs(10));
        let status = self.child.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "released and exited 0: {status}");
    }

    fn token(event: &Value) -> FencingToken {
        serde_json::from_value(event["token"].clone()).expect("a token")
    }
}

async fn wait_for_keys(client: &Client, name: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.lock_keys(name).await.unwrap().len() != count {
        assert!(Instant::now() < deadline, "{name} never had {count} keys");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_frozen_holder_loses_the_lock_within_its_ttl_and_reports_the_loss_when_resumed(
    service: Service,
) {
    let endpoints = service.endpoints();
    let holder = Holder::spawn(&endpoints, "/frozen");
    let acquired = holder.expect("acquired", Duration::from_secs(10));
    println!("holder process acquired: {acquired}");
    assert_eq!(acquired["ttl"], TTL.as_secs());

    let client = Client::connect(&endpoints).await.unwrap();
    let session = client.session(TTL).await.unwrap();
    let waiter = tokio::spawn(async move { session.lock("/frozen").await.unwrap() });
    wait_for_keys(&client, "/frozen", 2).await;

    println!("freezing the holder (SIGSTOP)");
    let frozen = Instant::now();
    holder.child.signal(Signal::STOP);
    let guard = timeout(within_ttl(TTL), waiter)
        .await
        .expect("the waiter acquires within TTL + 1 s")
        .unwrap();
    println!(
        "waiter acquired {:?} after the freeze, token {}",
        frozen.elapsed(),
        guard.token()
    );
    assert!(guard.token() > Holder::token(&acquired));

    println!("resuming the holder (SIGCONT)");
    let mut holder = holder;
    holder.child.signal(Signal::CONT);
    let lost = holder.expect("lost", Duration::from_secs(2));
    println!("the resumed holder reports: {lost}");
    let status = holder.child.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(3), "a lost lock exits with status 3");
}
both_backends!(a_frozen_holder_loses_the_lock_within_its_ttl_and_reports_the_loss_when_resumed);

async fn the_lock_command_releases_on_stdin_eof_and_on_sigterm(service: Service) {
    let endpoints = service.endpoints();
    let client = Client::connect(&endpoints).await.unwrap();

    let mut first = Holder::spawn(&endpoints, "/released");
    let first_acquired = first.expect("acquired", Duration::from_secs(10));
    let session = client.session(TTL).await.unwrap();
    let waiter = tokio::spawn(async move { session.lock("/released").await.unwrap() });
    wait_for_keys(&client, "/released", 2).await;

    println!("closing the holder's stdin");
    drop(first.stdin.take());
    first.expect("released", Duration::from_secs(5));
    assert!(first.child.wait_exit(Duration::from_secs(5)).success());
    let guard = timeout(Duration::from_secs(2), waiter)
        .await
        .expect("handover")
        .unwrap();
    assert!(guard.token() > Holder::token(&first_acquired));

    let mut second = Holder::spawn(&endpoints, "/released");
    wait_for_keys(&client, "/released", 2).await;
    guard.unlock().await.unwrap();
    let second_acquired = second.expect("acquired", Duration::from_secs(5));
    println!("second holder acquired: {second_acquired}; sending SIGTERM");
    second.child.signal(Signal::TERM);
    second.expect("released", Duration::from_secs(5));
    assert!(second.child.wait_exit(Duration::from_secs(5)).success());
    assert!(client.lock_keys("/released").await.unwrap().is_empty());
}
both_backends!(the_lock_command_releases_on_stdin_eof_and_on_sigterm);

#[test]
fn the_lock_command_reports_an_unreachable_etcd_in_one_line() {
    let endpoint = format!("127.0.0.1:{}", crate::support::proc::free_port());
    let output = Command::new(fencelock_bin())
        .args(["lock", "/nowhere", "--endpoints", &endpoint])
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("stderr: {stderr}");
    assert!(!output.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&endpoint), "names the endpoint: {stderr}");
    assert!(!stderr.contains("panicked"));
    assert!(output.stdout.is_empty());
}
