//! The real `etcdctl` against both lock services (`crate::support::backend`: a real etcd from
//! `crate::support::etcd`, and `fencelock lockd`): keys, transactions, watches with history and
//! compaction, leases, `etcdctl lock`, member list and endpoint status.
//!
//! Output is read in the forms etcdctl 3.4 and 3.5 print alike: `-w json` (keys and values
//! base64), `--print-value-only`, and the simple watch, txn and lease-list formats.

use crate::both_backends;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::backend::Service;
use crate::support::etcd::{etcdctl_bin, within_ttl};
use crate::support::proc::{ChildGuard, Signal, wait_for};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

/// Bound for anything a healthy local service does at once (an event, an acquisition).
const PROMPTLY: Duration = Duration::from_secs(5);

/// `etcdctl` with the service's endpoints and `args`, unstarted.
fn command(service: &Service, args: &[&str]) -> Command {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", service.endpoints().join(",")))
        .args(args);
    cmd
}

/// `etcdctl -w json <args>`, parsed.
fn json(service: &Service, args: &[&str]) -> Value {
    let output = service.etcdctl(&[&["-w", "json"], args].concat());
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "etcdctl {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// stdout of a successful `etcdctl <args>`.
fn stdout(service: &Service, args: &[&str]) -> String {
    String::from_utf8(service.etcdctl(args).stdout).expect("UTF-8 output")
}

/// `etcdctl <args>` that must fail; its stderr.
fn failing(service: &Service, args: &[&str]) -> String {
    let output = command(service, args).output().expect("cannot run etcdctl");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "etcdctl {args:?} succeeded");
    stderr
}

/// `etcdctl txn` with `script` on its stdin: compares, a blank line, the success requests, a
/// blank line, the failure requests, a blank line.
fn txn(service: &Service, script: &str) -> Output {
    let mut child = command(service, &["txn"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run etcdctl txn");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .expect("write the txn script");
    let output = child.wait_with_output().expect("etcdctl txn output");
    assert!(
        output.status.success(),
        "etcdctl txn failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn decode(field: &Value) -> String {
    let text = field
        .as_str()
        .unwrap_or_else(|| panic!("not base64: {field}"));
    String::from_utf8(BASE64.decode(text).expect("base64")).expect("UTF-8")
}

/// A key-value as `get -w json` prints it.
#[derive(Debug)]
struct Kv {
    key: String,
    value: String,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    lease: u64,
}

/// `get <key> [more args] -w json`: the header revision and the key-values.
fn get(service: &Service, args: &[&str]) -> (u64, Vec<Kv>) {
    let answer = json(service, &[&["get"], args].concat());
    let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
    let number = |kv: &Value, field: &str| kv[field].as_u64().unwrap_or(0);
    let kvs = kvs
        .iter()
        .map(|kv| Kv {
            key: decode(&kv["key"]),
            // etcd leaves an empty value out of the JSON.
            value: kv.get("value").map(decode).unwrap_or_default(),
            create_revision: number(kv, "create_revision"),
            mod_revision: number(kv, "mod_revision"),
            version: number(kv, "version"),
            lease: number(kv, "lease"),
        })
        .collect::<Vec<_>>();
    let count = answer["count"].as_u64().unwrap_or(0);
    assert_eq!(
        count as usize,
        kvs.len(),
        "count and kvs disagree: {answer}"
    );
    (revision(&answer["header"]), kvs)
}

fn revision(header: &Value) -> u64 {
    header["revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("no revision in {header}"))
}

/// `put <key> <value>`; the revision it created.
fn put(service: &Service, key: &str, value: &str) -> u64 {
    revision(&json(service, &["put", key, value])["header"])
}

/// A lease ID as etcdctl takes it on its command line.
fn hex(lease: u64) -> String {
    format!("{lease:x}")
}

/// An etcdctl that runs beside the test (watch, keep-alive, lock), with its stdout as lines.
struct Running {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    fn spawn(service: &Service, args: &[&str]) -> Running {
        Self::start(service, args, false)
    }

    /// As `spawn`, in a process group of its own, for etcdctl that starts a command.
    fn spawn_group(service: &Service, args: &[&str]) -> Running {
        Self::start(service, args, true)
    }

    fn start(service: &Service, args: &[&str], group: bool) -> Running {
        let mut cmd = command(service, args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let name = format!("etcdctl {}", args.join(" "));
        let mut child = if group {
            ChildGuard::spawn_group(name, &mut cmd)
        } else {
            ChildGuard::spawn(name, &mut cmd)
        };
        let stdout = child.child_mut().stdout.take().expect("piped stdout");
        let mut stderr = child.child_mut().stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Running {
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// The next line it prints, within `within`.
    fn line(&self, within: Duration) -> String {
        self.lines.recv_timeout(within).unwrap_or_else(|e| {
            panic!(
                "{} printed no line within {within:?} ({e})",
                self.child.name()
            )
        })
    }

    /// The next watch event in the simple format: type, key, value.
    fn event(&self) -> (String, String, String) {
        (
            self.line(PROMPTLY),
            self.line(PROMPTLY),
            self.line(PROMPTLY),
        )
    }

    /// Asserts it has printed nothing more so far.
    fn assert_silent(&self) {
        if let Ok(line) = self.lines.try_recv() {
            panic!("{} printed {line:?}", self.child.name());
        }
    }

    /// Waits for it to exit by itself; its status and everything it wrote to stderr.
    fn finish(mut self, within: Duration) -> (ExitStatus, String) {
        let status = self.child.wait_exit(within);
        let stderr = self.stderr.take().expect("stderr reader").join();
        (status, stderr.unwrap_or_default())
    }
}

fn event(kind: &str, key: &str, value: &str) -> (String, String, String) {
    (kind.into(), key.into(), value.into())
}

async fn put_get_and_delete_keys_and_prefixes(service: Service) {
    let revisions: Vec<u64> = [
        ("/kv/a", "1"),
        ("/kv/b", "2"),
        ("/kv/c/d", "3"),
        ("/kvz", "4"),
    ]
    .iter()
    .map(|(key, value)| put(&service, key, value))
    .collect();
    println!("puts created revisions {revisions:?}");
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");

    assert_eq!(
        stdout(&service, &["get", "/kv/a", "--print-value-only"]),
        "1\n"
    );
    let (header, kvs) = get(&service, &["/kv/", "--prefix"]);
    println!("get /kv/ --prefix: {kvs:?}");
    assert_eq!(
        header, revisions[3],
        "the header carries the latest revision"
    );
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["/kv/a", "/kv/b", "/kv/c/d"],
        "in key order, /kvz left out"
    );
    let values: Vec<&str> = kvs.iter().map(|kv| kv.value.as_str()).collect();
    assert_eq!(values, ["1", "2", "3"]);
    for (kv, &rev) in kvs.iter().zip(&revisions) {
        assert_eq!(kv.create_revision, rev, "{kv:?}");
        assert_eq!(kv.mod_revision, rev, "{kv:?}");
        assert_eq!(kv.version, 1, "{kv:?}");
        assert_eq!(kv.lease, 0, "{kv:?}");
    }

    let rewritten = put(&service, "/kv/a", "1b");
    let (_, kvs) = get(&service, &["/kv/a"]);
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].value, "1b");
    assert_eq!(
        kvs[0].create_revision, revisions[0],
        "a rewrite keeps create_revision"
    );
    assert_eq!(kvs[0].mod_revision, rewritten);
    assert_eq!(kvs[0].version, 2);

    assert_eq!(stdout(&service, &["del", "/kv/b"]).trim(), "1");
    assert_eq!(stdout(&service, &["del", "/kv/", "--prefix"]).trim(), "2");
    assert!(get(&service, &["/kv/", "--prefix"]).1.is_empty());
    assert_eq!(stdout(&service, &["del", "/kv/", "--prefix"]).trim(), "0");
    assert_eq!(
        stdout(&service, &["get", "/kvz", "--print-value-only"]),
        "4\n",
        "a key outside the prefix stays"
    );
    let (after, _) = get(&service, &["/kvz"]);
    assert!(after > rewritten, "deletes advance the revision");
}
both_backends!(put_get_and_delete_keys_and_prefixes);

async fn txn_runs_the_success_or_the_failure_branch_from_stdin(service: Service) {
    put(&service, "/txn/k", "v1");
    let script = "value(\"/txn/k\") = \"v1\"\n\n\
                  put /txn/k v2\nput /txn/done yes\n\n\
                  put /txn/failed yes\n\n";
    let first = String::from_utf8(txn(&service, script).stdout).unwrap();
    println!("first txn:\n{first}");
    assert_eq!(first.lines().next(), Some("SUCCESS"));
    let value = |key: &str| stdout(&service, &["get", key, "--print-value-only"]);
    assert_eq!(value("/txn/k"), "v2\n");
    assert_eq!(value("/txn/done"), "yes\n");
    assert_eq!(value("/txn/failed"), "", "the failure branch did not run");

    let second = String::from_utf8(txn(&service, script).stdout).unwrap();
    println!("same txn again:\n{second}");
    assert_eq!(second.lines().next(), Some("FAILURE"));
    assert_eq!(value("/txn/k"), "v2\n");
    assert_eq!(value("/txn/failed"), "yes\n");

    // The lock recipe's compare: a missing key has create revision 0; and a compare on the
    // mod revision of an existing key.
    let (_, kvs) = get(&service, &["/txn/k"]);
    let script = format!(
        "create(\"/txn/absent\") = \"0\"\nmod(\"/txn/k\") = \"{}\"\n\n\
         put /txn/absent created\ndel /txn/k\n\nput /txn/failed again\n\n",
        kvs[0].mod_revision
    );
    let third = String::from_utf8(txn(&service, &script).stdout).unwrap();
    assert_eq!(third.lines().next(), Some("SUCCESS"), "{third}");
    assert_eq!(value("/txn/absent"), "created\n");
    assert_eq!(value("/txn/k"), "");
    assert_eq!(value("/txn/failed"), "yes\n");
}
both_backends!(txn_runs_the_success_or_the_failure_branch_from_stdin);

async fn a_watch_sees_puts_and_deletes_made_after_it_started(service: Service) {
    let watch = Running::spawn(&service, &["watch", "/watch/k"]);
    // etcdctl says nothing when its watch is in place: put until it reports a put, then
    // every later put must follow in order.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut written = 0;
    let first = loop {
        written += 1;
        put(&service, "/watch/k", &format!("ready-{written}"));
        if let Ok(line) = watch.lines.recv_timeout(Duration::from_millis(200)) {
            break line;
        }
        assert!(Instant::now() < deadline, "the watch reported no put");
    };
    assert_eq!(first, "PUT");
    assert_eq!(watch.line(PROMPTLY), "/watch/k");
    let seen: u32 = watch
        .line(PROMPTLY)
        .strip_prefix("ready-")
        .and_then(|n| n.parse().ok())
        .expect("a value the test wrote");
    println!("the watch is in place from put {seen} of {written}");
    for later in seen + 1..=written {
        assert_eq!(
            watch.event(),
            event("PUT", "/watch/k", &format!("ready-{later}"))
        );
    }
    put(&service, "/watch/other", "not watched");
    put(&service, "/watch/k", "last");
    assert_eq!(watch.event(), event("PUT", "/watch/k", "last"));
    assert_eq!(stdout(&service, &["del", "/watch/k"]).trim(), "1");
    assert_eq!(watch.event(), event("DELETE", "/watch/k", ""));
    watch.assert_silent();
}
both_backends!(a_watch_sees_puts_and_deletes_made_after_it_started);

async fn a_watch_from_a_past_revision_replays_the_history(service: Service) {
    let r1 = put(&service, "/hist/k", "v1");
    put(&service, "/hist/other", "o1");
    let r2 = put(&service, "/hist/k", "v2");
    assert_eq!(stdout(&service, &["del", "/hist/k"]).trim(), "1");
    put(&service, "/hist/k", "v3");
    println!("history written from revision {r1}; replaying it");

    let watch = Running::spawn(&service, &["watch", "/hist/k", "--rev", &r1.to_string()]);
    assert_eq!(watch.event(), event("PUT", "/hist/k", "v1"));
    assert_eq!(watch.event(), event("PUT", "/hist/k", "v2"));
    assert_eq!(watch.event(), event("DELETE", "/hist/k", ""));
    assert_eq!(watch.event(), event("PUT", "/hist/k", "v3"));
    // The replay goes on live.
    put(&service, "/hist/k", "v4");
    assert_eq!(watch.event(), event("PUT", "/hist/k", "v4"));

    let prefix = Running::spawn(
        &service,
        &["watch", "/hist/", "--prefix", "--rev", &r2.to_string()],
    );
    assert_eq!(prefix.event(), event("PUT", "/hist/k", "v2"));
    assert_eq!(prefix.event(), event("DELETE", "/hist/k", ""));
    assert_eq!(prefix.event(), event("PUT", "/hist/k", "v3"));
    assert_eq!(prefix.event(), event("PUT", "/hist/k", "v4"));
    watch.assert_silent();

    let from_start = Running::spawn(
        &service,
        &["watch", "/hist/", "--prefix", "--rev", &r1.to_string()],
    );
    assert_eq!(from_start.event(), event("PUT", "/hist/k", "v1"));
    assert_eq!(from_start.event(), event("PUT", "/hist/other", "o1"));
    assert_eq!(from_start.event(), event("PUT", "/hist/k", "v2"));
}
both_backends!(a_watch_from_a_past_revision_replays_the_history);

async fn a_watch_from_a_compacted_revision_is_cancelled_with_the_compacted_error(service: Service) {
    let old = put(&service, "/compact/k", "old");
    put(&service, "/compact/k", "middle");
    let kept = put(&service, "/compact/k", "kept");
    let said = stdout(&service, &["compaction", &kept.to_string()]);
    println!("{}", said.trim());
    assert_eq!(said.trim(), format!("compacted revision {kept}"));

    let watch = Running::spawn(
        &service,
        &["watch", "/compact/k", "--rev", &old.to_string()],
    );
    let (status, stderr) = watch.finish(PROMPTLY);
    println!("watch --rev {old} ended with {status}: {}", stderr.trim());
    assert!(!status.success());
    assert!(
        stderr.contains("required revision has been compacted"),
        "{stderr}"
    );

    // The compaction revision itself is still in the history.
    let watch = Running::spawn(
        &service,
        &["watch", "/compact/k", "--rev", &kept.to_string()],
    );
    assert_eq!(watch.event(), event("PUT", "/compact/k", "kept"));
    watch.assert_silent();
}
both_backends!(a_watch_from_a_compacted_revision_is_cancelled_with_the_compacted_error);

/// `lease list`: the IDs it prints after `found N leases`.
fn lease_list(service: &Service) -> Vec<u64> {
    let text = stdout(service, &["lease", "list"]);
    let mut lines = text.lines();
    let found = lines.next().expect("a first line");
    let ids: Vec<u64> = lines
        .map(|id| u64::from_str_radix(id.trim(), 16).expect("a hex lease ID"))
        .collect();
    assert_eq!(found, format!("found {} leases", ids.len()));
    ids
}

/// `lease grant <ttl>`: the ID and the granted TTL.
fn grant(service: &Service, ttl: u64) -> (u64, u64) {
    let answer = json(service, &["lease", "grant", &ttl.to_string()]);
    let id = answer["ID"].as_u64().expect("a lease ID");
    assert!(id > 0, "{answer}");
    (id, answer["TTL"].as_u64().expect("a TTL"))
}

async fn leases_are_granted_listed_inspected_and_revoked(service: Service) {
    let (lease, ttl) = grant(&service, 60);
    let (other, _) = grant(&service, 60);
    println!("granted {} and {}", hex(lease), hex(other));
    assert_eq!(ttl, 60);
    assert_ne!(lease, other);
    let flag = format!("--lease={}", hex(lease));
    put_with_lease(&service, "/lease/a", &flag);
    put_with_lease(&service, "/lease/b", &flag);
    let (_, kvs) = get(&service, &["/lease/", "--prefix"]);
    assert!(kvs.iter().all(|kv| kv.lease == lease), "{kvs:?}");

    let listed = lease_list(&service);
    assert!(
        listed.contains(&lease) && listed.contains(&other),
        "{listed:?}"
    );

    let alive = json(&service, &["lease", "timetolive", &hex(lease), "--keys"]);
    println!("timetolive: {alive}");
    assert_eq!(alive["id"].as_u64(), Some(lease));
    assert_eq!(alive["granted-ttl"].as_u64(), Some(60));
    let left = alive["ttl"].as_i64().expect("a TTL");
    assert!(0 < left && left <= 60, "{alive}");
    let mut keys: Vec<String> = alive["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(decode)
        .collect();
    keys.sort();
    assert_eq!(keys, ["/lease/a", "/lease/b"]);

    let said = stdout(&service, &["lease", "revoke", &hex(lease)]);
    println!("{}", said.trim());
    assert!(said.contains("revoked"), "{said}");
    assert!(
        get(&service, &["/lease/", "--prefix"]).1.is_empty(),
        "revoking deletes the lease's keys"
    );
    let gone = json(&service, &["lease", "timetolive", &hex(lease)]);
    assert_eq!(gone["ttl"].as_i64(), Some(-1), "{gone}");
    let listed = lease_list(&service);
    assert!(
        !listed.contains(&lease) && listed.contains(&other),
        "{listed:?}"
    );

    let again = failing(&service, &["lease", "revoke", &hex(lease)]);
    println!("revoking again: {}", again.trim());
    assert!(again.contains("requested lease not found"), "{again}");
}
both_backends!(leases_are_granted_listed_inspected_and_revoked);

fn put_with_lease(service: &Service, key: &str, lease_flag: &str) {
    assert_eq!(stdout(service, &["put", key, "x", lease_flag]).trim(), "OK");
}

async fn keep_alive_holds_a_key_past_its_ttl_until_the_keeper_is_killed(service: Service) {
    let (lease, ttl) = grant(&service, 2);
    let ttl = Duration::from_secs(ttl);
    put_with_lease(&service, "/kept", &format!("--lease={}", hex(lease)));
    let mut keeper = Running::spawn(&service, &["lease", "keep-alive", &hex(lease)]);
    let first = keeper.line(PROMPTLY);
    println!("{first}");
    assert!(
        first.contains(&format!(
            "{lease:016x} keepalived with TTL({})",
            ttl.as_secs()
        )),
        "{first}"
    );

    // The property is about time passing: the key must outlive two TTLs.
    let until = Instant::now() + ttl * 2 + Duration::from_millis(500);
    while Instant::now() < until {
        assert_eq!(
            get(&service, &["/kept"]).1.len(),
            1,
            "the key vanished while keep-alive ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("the key outlived {:?}; killing keep-alive", ttl * 2);
    keeper.child.kill();
    let killed = Instant::now();
    wait_for("the key to vanish", within_ttl(ttl), || {
        get(&service, &["/kept"]).1.is_empty().then_some(())
    });
    println!("the key vanished {:?} after the kill", killed.elapsed());
    let gone = json(&service, &["lease", "timetolive", &hex(lease)]);
    assert_eq!(gone["ttl"].as_i64(), Some(-1), "{gone}");
}
both_backends!(keep_alive_holds_a_key_past_its_ttl_until_the_keeper_is_killed);

/// Waits until `name` has exactly `count` lock keys; returns them in create_revision order.
fn wait_for_lock_keys(service: &Service, name: &str, count: usize) -> Vec<Kv> {
    let prefix = format!("{name}/");
    wait_for(
        &format!("{count} keys under {prefix}"),
        Duration::from_secs(10),
        || {
            let (_, mut kvs) = get(service, &[&prefix, "--prefix"]);
            kvs.sort_by_key(|kv| kv.create_revision);
            (kvs.len() == count).then_some(kvs)
        },
    )
}

async fn lock_command_holders_queue_by_create_revision_and_hand_over_on_revoke_and_unlock(
    service: Service,
) {
    let name = "/ctl-lock";
    // The holder runs a command that prints the lock key etcdctl gives it, then waits.
    let first = Running::spawn_group(
        &service,
        &[
            "lock",
            name,
            "--",
            "sh",
            "-c",
            "echo \"$ETCD_LOCK_KEY\"; exec sleep 60",
        ],
    );
    let first_key = first.line(Duration::from_secs(10));
    println!("the first holder runs its command with {first_key}");
    let keys = wait_for_lock_keys(&service, name, 1);
    assert_eq!(keys[0].key, first_key);
    assert_eq!(first_key, format!("{name}/{}", hex(keys[0].lease)));

    let second = Running::spawn(&service, &["lock", name]);
    let keys = wait_for_lock_keys(&service, name, 2);
    let (holder, waiter) = (&keys[0], &keys[1]);
    println!(
        "holder {} (create_revision {}), waiter {} (create_revision {})",
        holder.key, holder.create_revision, waiter.key, waiter.create_revision
    );
    assert_eq!(holder.key, first_key);
    assert!(waiter.create_revision > holder.create_revision);
    assert_ne!(waiter.lease, holder.lease);
    second.assert_silent();
    let listed = lease_list(&service);
    assert!(listed.contains(&holder.lease) && listed.contains(&waiter.lease));

    println!("revoking the holder's lease {}", hex(holder.lease));
    service.etcdctl(&["lease", "revoke", &hex(holder.lease)]);
    // Without a command, `etcdctl lock` prints its key and value once it holds the lock.
    assert_eq!(second.line(PROMPTLY), waiter.key);
    let keys = wait_for_lock_keys(&service, name, 1);
    assert_eq!(keys[0].key, waiter.key);

    let third = Running::spawn(&service, &["lock", name]);
    let keys = wait_for_lock_keys(&service, name, 2);
    let latest = &keys[1];
    assert!(latest.create_revision > waiter.create_revision);
    third.assert_silent();

    println!("stopping the second holder (SIGTERM): it unlocks");
    second.child.signal(Signal::TERM);
    let (status, stderr) = second.finish(PROMPTLY);
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(third.line(PROMPTLY), latest.key);
    let keys = wait_for_lock_keys(&service, name, 1);
    assert_eq!(keys[0].key, latest.key);
    // `first` is still running its command; dropping it kills etcdctl and the command.
}
both_backends!(lock_command_holders_queue_by_create_revision_and_hand_over_on_revoke_and_unlock);

async fn member_list_and_endpoint_status_describe_one_member(service: Service) {
    let members = json(&service, &["member", "list"]);
    println!("member list: {members}");
    let list = members["members"].as_array().expect("members");
    assert_eq!(list.len(), 1, "{members}");
    let id = list[0]["ID"].as_u64().expect("a member ID");
    assert!(id > 0);
    let cluster = members["header"]["cluster_id"]
        .as_u64()
        .expect("cluster_id");
    assert!(cluster > 0);
    assert_eq!(members["header"]["member_id"].as_u64(), Some(id));
    let endpoint = service.endpoints().remove(0);
    let client_urls: Vec<&str> = list[0]["clientURLs"]
        .as_array()
        .expect("clientURLs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        client_urls.contains(&format!("http://{endpoint}").as_str()),
        "{client_urls:?}"
    );

    let written = put(&service, "/status", "x");
    let status = json(&service, &["endpoint", "status"]);
    println!("endpoint status: {status}");
    let statuses = status.as_array().expect("one status per endpoint");
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0]["Endpoint"], endpoint.as_str());
    let status = &statuses[0]["Status"];
    assert_eq!(status["header"]["cluster_id"].as_u64(), Some(cluster));
    assert_eq!(status["header"]["member_id"].as_u64(), Some(id));
    assert!(revision(&status["header"]) >= written);
    assert_eq!(status["leader"].as_u64(), Some(id), "the one member leads");
    assert!(
        !status["version"].as_str().unwrap_or_default().is_empty(),
        "a version"
    );
}
both_backends!(member_list_and_endpoint_status_describe_one_member);
