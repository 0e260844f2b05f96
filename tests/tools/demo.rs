//! `fencelock demo --json` end to end, on the embedded lockd and on a real 3-member etcd: the
//! stale write of a client frozen past its lease is rejected with fencing and silently
//! overwrites the newer holder's value without it; the lease expiry is seen on the lock
//! service before client 2 acquires; the timeline picture is written.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::proc::{ChildGuard, fencelock_bin};
use serde_json::Value;

/// A scenario takes about a TTL; the demo's own steps are bounded, this only stops a hang.
const DEMO_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `fencelock demo --json --out <tmp>/new/dir <args>` (the demo creates `--out` when it
/// is missing); its exit status, report and picture.
fn run_demo(args: &[&str]) -> (Option<i32>, Value, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("new/dir");
    let mut cmd = Command::new(fencelock_bin());
    cmd.args(["demo", "--json", "--out"])
        .arg(&out)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn("fencelock demo", &mut cmd);
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let stdout = read_all(Box::new(child.child_mut().stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.child_mut().stderr.take().unwrap()));
    let status = child.wait_exit(DEMO_TIMEOUT);
    let text = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    println!("{text}");
    let report: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}); the demo's stderr: {stderr}"));
    let svg = std::fs::read_to_string(out.join("demo-timeline.svg"))
        .expect("the demo writes demo-timeline.svg in --out");
    (status.code(), report, svg)
}

fn scenario<'a>(report: &'a Value, fencing: &str) -> &'a Value {
    report["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .find(|s| s["fencing"] == fencing)
        .unwrap_or_else(|| panic!("no scenario with --fencing {fencing}"))
}

fn ms(s: &Value, event: &str) -> f64 {
    s["times_ms"][event]
        .as_f64()
        .unwrap_or_else(|| panic!("no time for {event}"))
}

/// What every run must show, whatever the lock service.
fn assert_story(status: Option<i32>, report: &Value, svg: &str) {
    assert_story_of(status, report, svg, true);
}

/// The story; `names_the_token` when the refusal names the newer token (a fence's), not
/// when it says the writer's lock key is gone (etcd's compare on the lock key).
fn assert_story_of(status: Option<i32>, report: &Value, svg: &str, names_the_token: bool) {
    assert_eq!(status, Some(0), "fencing rejected the stale write");
    assert_eq!(report["fencing_rejected_stale_write"], true);
    assert_eq!(report["unfenced_stale_write_overwrote"], true);

    for (fencing, client1_write, client1_exit, final_value) in [
        ("strict", "stale", 3, "written by client 2"),
        ("off", "accepted", 0, "written by client 1"),
    ] {
        let s = scenario(report, fencing);
        let (c1, c2) = (&s["client1"], &s["client2"]);
        println!(
            "--fencing {fencing}: tokens {} then {}, client 1's write {}, final value {}",
            c1["token"], c2["token"], c1["write"], s["final_value"]
        );
        assert!(
            c2["token"].as_u64().unwrap() > c1["token"].as_u64().unwrap(),
            "client 2's token is larger than client 1's"
        );
        assert_eq!(c2["write"], "accepted", "client 2's write is accepted");
        assert_eq!(c2["exit_status"], 0);
        assert_eq!(c1["write"], client1_write, "client 1's stale write");
        assert_eq!(c1["exit_status"], client1_exit);
        assert_eq!(s["final_value"], final_value);
        if fencing == "strict" && names_the_token {
            assert_eq!(
                c1["current_token"], c2["token"],
                "rejected for client 2's token"
            );
        }
        assert!(
            c1["lease_lost_noticed"].is_string(),
            "resumed, client 1 noticed its lease was gone and wrote anyway"
        );

        assert_eq!(s["lease_expired_before_client2_acquired"], true);
        assert!(
            s["expiry_revision"].as_u64().unwrap()
                <= s["client2_acquired_revision"].as_u64().unwrap(),
            "client 1's key was deleted at or before the revision client 2 acquired at"
        );
        let frozen = ms(s, "client1_frozen");
        let expired = ms(s, "lease_expired");
        let acquired2 = ms(s, "client2_acquired");
        let resumed = ms(s, "client1_resumed");
        assert!(frozen < expired, "the lease expired during the freeze");
        // Times are rounded to 0.1 ms: steps of one process may share one.
        assert!(
            expired <= acquired2,
            "expiry shown before client 2 acquired"
        );
        assert!(acquired2 <= ms(s, "client2_wrote"));
        assert!(
            ms(s, "client2_wrote") < resumed,
            "client 1 resumed after client 2 wrote"
        );
        assert!(resumed < ms(s, "client1_wrote"));
        let ttl_ms = s["ttl_s"].as_f64().unwrap() * 1000.0;
        // The last keepalive before the freeze was at most a third of the TTL earlier.
        assert!(
            expired - frozen > ttl_ms / 2.0,
            "the lease expired only {} ms into the freeze",
            expired - frozen
        );
    }

    assert!(svg.starts_with("<svg"), "an SVG picture");
    assert!(svg.trim_end().ends_with("</svg>"));
    for text in [
        "With fencing",
        "Without fencing",
        "lease expired",
        "client 2",
        "storage",
    ] {
        assert!(svg.contains(text), "the picture shows {text:?}");
    }
}

#[test]
fn the_demo_on_lockd_rejects_the_stale_write_with_fencing_and_loses_client_2s_write_without() {
    let (status, report, svg) = run_demo(&[]);
    assert_eq!(report["lock_service"], "lockd");
    assert_story(status, &report, &svg);
    // lockd expires a lease within milliseconds of its TTL: a scenario takes little more.
    for s in report["scenarios"].as_array().unwrap() {
        let ttl_ms = s["ttl_s"].as_f64().unwrap() * 1000.0;
        let took = ms(s, "client1_exited");
        assert!(
            took < ttl_ms + 1500.0,
            "a scenario took {took} ms with a TTL of {ttl_ms} ms"
        );
    }
}

#[tokio::test]
async fn the_demo_on_a_three_member_etcd_rejects_the_stale_write_with_fencing() {
    let Some(etcd) = crate::support::etcd::start(3).await else {
        return;
    };
    let endpoints = etcd.endpoints().join(",");
    let (status, report, svg) =
        tokio::task::spawn_blocking(move || run_demo(&["--endpoints", &endpoints]))
            .await
            .unwrap();
    assert_eq!(report["lock_service"], "etcd");
    assert_story(status, &report, &svg);
}

#[tokio::test]
async fn the_demo_and_its_clients_reach_a_mutual_tls_etcd_with_etcdctls_flags() {
    let certs = crate::support::certs::TestCerts::new();
    let Some(etcd) = crate::support::etcd::start_with(1, certs.mutual_tls()).await else {
        return;
    };
    let mut args = vec![format!("--endpoints={}", etcd.endpoints().join(","))];
    args.extend(certs.client_flags());
    // The demo connects with the flags and hands them to its `fencelock client` processes.
    let (status, report, svg) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_demo(&args)
    })
    .await
    .unwrap();
    assert_eq!(report["lock_service"], "etcd");
    assert_story(status, &report, &svg);
}

#[test]
fn the_demo_on_postgres_refuses_the_stale_transaction_with_the_fence_and_loses_without() {
    // The demo starts its own PostgreSQL and removes it afterwards.
    if !crate::support::postgres::available() {
        return;
    }
    let (status, report, svg) = run_demo(&["--resource", "postgres"]);
    assert_eq!(report["resource"], "postgres");
    assert_story(status, &report, &svg);
}

#[test]
fn the_demo_on_keys_in_the_lock_service_refuses_the_write_of_a_holder_whose_key_is_gone() {
    let (status, report, svg) = run_demo(&["--resource", "etcd"]);
    assert_eq!(report["resource"], "etcd");
    assert_story_of(status, &report, &svg, false);
}

#[test]
fn the_demo_refuses_bad_input_in_one_line() {
    // A directory cannot be made under a plain file, not even by root.
    let file = tempfile::NamedTempFile::new().unwrap();
    let under_a_file = file.path().join("dir/for/the/picture");
    let output = Command::new(fencelock_bin())
        .args(["demo", "--json", "--out"])
        .arg(&under_a_file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("stderr: {stderr}");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("dir/for/the/picture"), "{stderr}");
}
