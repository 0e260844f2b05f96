//! `fencelock client 1|2` as a person runs it, through pipes: the seed's manual flow (client 1
//! waits on Enter, its lease is revoked with `etcdctl`, client 2 writes, Enter), a real
//! `--pause`, and the exit statuses (0 accepted, 3 stale, 1 any other failure).

use crate::both_backends;

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::backend::Service;
use crate::support::lockd::LockdProcess;
use crate::support::proc::{ChildGuard, fencelock_bin, free_port};
use crate::support::storage::StorageProcess;
use serde_json::Value;

/// Bound for anything a healthy local service does at once (start, acquire, write).
const PROMPTLY: Duration = Duration::from_secs(10);

/// `fencelock client <n>` against `endpoints` and `storage`, on lock `lock`, unstarted.
fn client(n: u8, endpoints: &[String], storage: &str, lock: &str) -> Command {
    let mut cmd = Command::new(fencelock_bin());
    cmd.args(["client", &n.to_string()])
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--storage", storage, "--lock", lock])
        .env_remove("ETCDCTL_ENDPOINTS")
        .env("RUST_LOG", "warn");
    cmd
}

/// A client running in the background, its stdin held by the test, its stdout read line by
/// line on a thread.
struct Running {
    child: ChildGuard,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(name: &str, mut cmd: Command) -> Running {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = ChildGuard::spawn(name, &mut cmd);
        let stdin = child.child_mut().stdin.take().expect("piped stdin");
        let stdout = child.child_mut().stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("{line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (seen before or arriving within `within`) that contains `text`.
    fn line_with(&mut self, text: &str, within: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no line with {text:?} within {within:?}; seen: {:#?}",
                    self.seen
                )
            });
            self.seen.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    /// The JSON event of `kind` (with `--json`).
    fn event(&mut self, kind: &str, within: Duration) -> Value {
        let line = self.line_with(&format!(r#""event":"{kind}""#), within);
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
    }

    fn press_enter(&mut self) {
        self.stdin
            .write_all(b"\n")
            .expect("client 1 reads its stdin");
        self.stdin.flush().unwrap();
    }
}

/// The text between `before` and `after` in `line`.
fn between<'a>(line: &'a str, before: &str, after: &str) -> &'a str {
    let start = line
        .find(before)
        .unwrap_or_else(|| panic!("no {before:?} in {line:?}"))
        + before.len();
    let len = line[start..]
        .find(after)
        .unwrap_or_else(|| panic!("no {after:?} after {before:?} in {line:?}"));
    &line[start..start + len]
}

fn token_in(line: &str) -> u64 {
    between(line, "fencing token ", " ")
        .parse()
        .expect("a token")
}

/// The value stored under `key`, read without a token.
async fn stored(storage: &str, key: &str) -> String {
    let body: Value = crate::support::http_client()
        .get(format!("{storage}/v1/kv/{key}"))
        .send()
        .await
        .expect("the storage answers")
        .json()
        .await
        .expect("a JSON value");
    body["value"].as_str().expect("a stored value").to_owned()
}

async fn the_seed_walkthrough_client_1_waits_for_enter_its_lease_is_revoked_with_etcdctl_and_its_write_is_rejected(
    service: Service,
) {
    let endpoints = service.endpoints();
    let storage = StorageProcess::in_memory("strict");

    println!("client 1 acquires /walkthrough and waits for Enter");
    let mut first = Running::spawn(
        "fencelock client 1",
        client(1, &endpoints, &storage.url, "/walkthrough"),
    );
    let acquired = first.line_with("acquired lock /walkthrough", PROMPTLY);
    let token1 = token_in(&acquired);
    let lease = between(&acquired, "(lease ", ",").to_owned();
    let hint = first.line_with("lease revoke", PROMPTLY);
    assert!(
        hint.trim_start().starts_with("etcdctl --endpoints=") && hint.ends_with(&lease),
        "client 1 prints how to revoke its lease: {hint:?}"
    );
    first.line_with("press Enter", PROMPTLY);
    assert!(
        first.child.is_running(),
        "client 1 waits for Enter before writing"
    );

    println!("etcdctl lease revoke {lease}");
    service.etcdctl(&["lease", "revoke", &lease]);

    println!("client 2 acquires and writes at once");
    let second = client(2, &endpoints, &storage.url, "/walkthrough")
        .stdin(Stdio::null())
        .output()
        .expect("client 2 runs");
    let out2 = String::from_utf8_lossy(&second.stdout);
    println!("{out2}");
    assert_eq!(
        second.status.code(),
        Some(0),
        "client 2's write is accepted"
    );
    let token2 = token_in(
        out2.lines()
            .find(|l| l.contains("acquired lock"))
            .expect("client 2 acquired"),
    );
    assert!(
        token2 > token1,
        "client 2's token {token2} > client 1's {token1}"
    );
    assert!(out2.contains("\"written by client 2\" to key0 with token"));
    assert!(out2.contains(": accepted"), "{out2}");

    // Not paused, client 1 can tell; it writes all the same, which is the danger shown.
    first.line_with("warning: my lock is gone", PROMPTLY);
    println!("Enter for client 1");
    first.press_enter();
    let rejected = first.line_with("rejected", PROMPTLY);
    assert!(
        rejected.contains(&format!("already seen token {token2}")),
        "{rejected}"
    );
    let status = first.child.wait_exit(PROMPTLY);
    assert_eq!(status.code(), Some(3), "a stale write exits with status 3");
    assert_eq!(stored(&storage.url, "key0").await, "written by client 2");
}
both_backends!(
    the_seed_walkthrough_client_1_waits_for_enter_its_lease_is_revoked_with_etcdctl_and_its_write_is_rejected
);

/// `--pause` must stop the keepalives too: client 2 can only acquire while client 1 is
/// paused if client 1's lease expires, which it does only when no keepalive is sent.
#[tokio::test]
async fn a_paused_client_1_loses_its_lease_to_client_2_and_its_write_is_rejected_as_stale() {
    let lockd = LockdProcess::start();
    let storage = StorageProcess::in_memory("strict");
    let endpoints = lockd.endpoints();

    let mut first = client(1, &endpoints, &storage.url, "/paused");
    first.args(["--ttl", "1", "--pause", "4s", "--json"]);
    let mut first = Running::spawn("fencelock client 1 --pause 4s", first);
    let acquired1 = first.event("acquired", PROMPTLY);
    first.event("pausing", PROMPTLY);

    let mut second = client(2, &endpoints, &storage.url, "/paused");
    second.args(["--ttl", "1", "--json"]);
    let mut second = Running::spawn("fencelock client 2", second);
    // Within the pause: the lease (TTL 1 s) must expire although client 1 still runs.
    let acquired2 = second.event("acquired", Duration::from_millis(3500));
    assert!(
        first.child.is_running(),
        "client 2 acquired while client 1 was paused, not after it ended"
    );
    let wrote2 = second.event("wrote", PROMPTLY);
    assert_eq!(wrote2["outcome"], "accepted");
    assert_eq!(second.child.wait_exit(PROMPTLY).code(), Some(0));
    assert!(acquired2["token"].as_u64() > acquired1["token"].as_u64());

    first.event("resumed", PROMPTLY);
    let lost = first.event("lease_lost", PROMPTLY);
    println!("client 1 noticed: {lost}");
    let wrote1 = first.event("wrote", PROMPTLY);
    assert_eq!(wrote1["outcome"], "stale");
    assert_eq!(wrote1["current"], acquired2["token"]);
    assert_eq!(first.child.wait_exit(PROMPTLY).code(), Some(3));
    assert_eq!(stored(&storage.url, "key0").await, "written by client 2");
}

/// Runs a client to its end and returns its exit status and stderr.
fn run_to_end(mut cmd: Command) -> (Option<i32>, String) {
    let output = cmd.stdin(Stdio::null()).output().expect("the client runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    println!("stderr: {stderr}");
    (output.status.code(), stderr)
}

#[test]
fn a_client_exits_1_with_one_line_when_the_storage_or_the_lock_service_is_unreachable() {
    let lockd = LockdProcess::start();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let (status, stderr) = run_to_end(client(2, &lockd.endpoints(), &nowhere, "/unreachable"));
    assert_eq!(status, Some(1), "an unreachable storage is a failure");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("storage"), "{stderr}");

    let (status, stderr) = run_to_end(client(2, &lockd.endpoints(), "not a url", "/bad-url"));
    assert_eq!(status, Some(1), "a bad storage URL is a failure");
    assert!(stderr.contains("not a url"), "{stderr}");

    let no_lock_service = vec![format!("127.0.0.1:{}", free_port())];
    let storage = StorageProcess::in_memory("strict");
    let (status, stderr) = run_to_end(client(1, &no_lock_service, &storage.url, "/none"));
    assert_eq!(status, Some(1), "an unreachable lock service is a failure");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&no_lock_service[0]), "{stderr}");
    assert!(!stderr.contains("panicked"));
}
