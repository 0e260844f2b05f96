//! `fencelock check`, the real binary, in short runs with fixed seeds: the checker sees lost
//! updates of the counter and lost elements of the set where the fencing policy allows them,
//! none under strict fencing whatever the fault, on lockd and on a real 3-member etcd
//! (`crate::support::etcd`), and refuses faults it cannot inject. With `--resource postgres`
//! (the checker's own PostgreSQL; skipped without one, see `crate::support::postgres`) and
//! `--resource etcd` it checks the fence adapters the same way.
//!
//! Runs are a few seconds with TTL 1 s and a fault every second, so each one sees several
//! faults; what is asserted is the analysis of the recorded history, never a timing.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::proc::fencelock_bin;
use serde_json::Value;

/// Common flags of every run: short, dense in faults, repeatable.
const SHORT: &[&str] = &[
    "--clients",
    "5",
    "--ttl",
    "1",
    "--work",
    "0.3-1",
    "--interval",
    "1",
    "--seed",
    "7",
    "--json",
];

fn check(out: &Path, args: &[&str]) -> Output {
    check_with(out, SHORT, args)
}

/// `fencelock check` with `base` in place of [`SHORT`].
fn check_with(out: &Path, base: &[&str], args: &[&str]) -> Output {
    Command::new(fencelock_bin())
        .arg("check")
        .args(base)
        .arg("--out")
        .arg(out)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("cannot run fencelock check")
}

/// Runs a check that must finish with `status`; returns its JSON result.
fn check_json(out: &Path, args: &[&str], status: i32) -> Value {
    check_json_with(out, SHORT, args, status)
}

/// [`check_json`] with `base` in place of [`SHORT`] (which must ask for `--json`).
fn check_json_with(out: &Path, base: &[&str], args: &[&str], status: i32) -> Value {
    let output = check_with(out, base, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(status),
        "fencelock check {args:?}: {stderr}"
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The report of `policy`'s run.
fn report<'a>(result: &'a Value, policy: &str) -> &'a Value {
    result["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["policy"] == policy)
        .map(|r| &r["report"])
        .unwrap_or_else(|| panic!("no {policy} run in {result:#}"))
}

/// A usage error (exit status 2) in one line naming `mentions`.
fn assert_refused(output: &Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    crate::support::proc::assert_one_line(&stderr, mentions);
}

fn lost(report: &Value) -> u64 {
    report["lost_updates"]["count"]
        .as_u64()
        .expect("lost_updates.count")
}

fn acknowledged(report: &Value) -> u64 {
    report["acknowledged_increments"]
        .as_u64()
        .expect("acknowledged_increments")
}

fn backwards(report: &Value) -> usize {
    report["backwards_tokens"]
        .as_array()
        .expect("backwards_tokens")
        .len()
}

fn stale(report: &Value) -> u64 {
    let s = &report["stale_rejections"];
    s["reads"].as_u64().unwrap_or(0) + s["writes"].as_u64().unwrap_or(0)
}

fn faults_injected(report: &Value, fault: &str) -> u64 {
    report["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .filter(|f| f["fault"] == fault)
        .map(|f| f["count"].as_u64().unwrap_or(0))
        .sum()
}

/// Strict fencing: no lost update, no token accepted behind the fence, while the faults did
/// bite (stale requests were refused) and work got done.
fn assert_safe(report: &Value) {
    println!(
        "strict: {} acknowledged increments, {} stale rejections, {} lost",
        acknowledged(report),
        stale(report),
        lost(report)
    );
    assert_eq!(lost(report), 0, "lost updates under strict: {report:#}");
    assert_eq!(
        backwards(report),
        0,
        "backwards tokens under strict: {report:#}"
    );
    assert_eq!(report["valid"], true);
    assert!(
        acknowledged(report) >= 5,
        "too little work got done: {report:#}"
    );
}

/// A 10 s run on lockd under `policy` whose only fault freezes a holder right after its read
/// and resumes it once the next holder has read too; returns that policy's report.
fn freeze_after_read(policy: &str) -> Value {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--workload",
        "counter",
        "--duration",
        "10",
        "--faults",
        "freeze-after-read",
        "--fencing",
        policy,
    ];
    let result = check_json(out.path(), &args, 0);
    let report = report(&result, policy).clone();
    println!(
        "{policy}: {} lost of {}",
        lost(&report),
        acknowledged(&report)
    );
    assert!(faults_injected(&report, "freeze-after-read") >= 1);
    report
}

#[test]
fn without_fencing_a_holder_frozen_after_its_read_loses_an_update() {
    let off = freeze_after_read("off");
    assert!(lost(&off) >= 1, "no lost update without fencing: {off:#}");
    // Nothing is claimed without fencing, so the run is not a violation.
    assert_eq!(off["claims_safety"], false);
}

#[test]
fn write_only_fencing_loses_an_update_when_the_frozen_holder_resumes_during_the_next() {
    let writes = freeze_after_read("writes");
    assert!(
        lost(&writes) >= 1,
        "no lost update with write-only fencing: {writes:#}"
    );
}

#[test]
fn strict_fencing_loses_nothing_under_every_fault_on_lockd() {
    let out = tempfile::tempdir().unwrap();
    let result = check_json(
        out.path(),
        &[
            "--workload",
            "counter",
            "--duration",
            "12",
            "--fencing",
            "strict",
        ],
        0,
    );
    let strict = report(&result, "strict");
    assert_safe(strict);
    assert!(
        stale(strict) >= 1,
        "no stale request was refused: {strict:#}"
    );
    assert_eq!(result["valid"], true);

    // The kept history analyses to the same findings.
    let again = check_json(out.path(), &["--analyse", out.path().to_str().unwrap()], 0);
    let strict_again = report(&again, "strict");
    assert_eq!(lost(strict_again), lost(strict));
    assert_eq!(acknowledged(strict_again), acknowledged(strict));
    for file in [
        "worker-1.jsonl",
        "faults.jsonl",
        "lock-service.jsonl",
        "timeline.svg",
    ] {
        assert!(
            out.path().join("strict").join(file).is_file(),
            "{file} missing"
        );
    }
}

#[tokio::test]
async fn on_a_three_member_etcd_strict_fencing_loses_nothing_and_the_others_lose_updates() {
    let Some(_slots) = crate::support::etcd::reserve(3).await else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    // Every fault, member kills and freezes included, once per policy.
    let result = check_json(
        out.path(),
        &[
            "--workload",
            "counter",
            "--etcd-members",
            "3",
            "--duration",
            "10",
            "--compare",
            "--faults",
            "freeze-after-read,kill-member,freeze-lock-service,freeze-after-read,revoke,\
             kill-storage,freeze-holder,freeze-after-read",
        ],
        0,
    );
    let strict = report(&result, "strict");
    assert_safe(strict);
    for policy in ["writes", "off"] {
        let r = report(&result, policy);
        println!("{policy}: {} lost of {}", lost(r), acknowledged(r));
        assert!(lost(r) >= 1, "no lost update under {policy}: {r:#}");
    }
}

fn set_findings(report: &Value) -> &Value {
    assert_eq!(report["workload"], "set", "{report:#}");
    &report["set"]
}

fn count(value: &Value, field: &str) -> usize {
    value[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {value:#}"))
        .len()
}

#[test]
fn the_set_workload_loses_no_element_under_strict_fencing_and_every_fault_on_lockd() {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--workload",
        "set",
        "--duration",
        "10",
        "--fencing",
        "strict",
    ];
    let result = check_json(out.path(), &args, 0);
    let strict = report(&result, "strict");
    let set = set_findings(strict);
    let acknowledged = set["acknowledged_adds"]
        .as_u64()
        .expect("acknowledged_adds");
    println!(
        "strict set: {acknowledged} acknowledged adds, {} unknown, final set {}, {} stale \
         rejections",
        set["unknown_adds"],
        set["final_size"],
        stale(strict)
    );
    assert_eq!(count(set, "lost"), 0, "lost elements under strict: {set:#}");
    assert_eq!(count(set, "phantoms"), 0, "phantoms under strict: {set:#}");
    assert_eq!(backwards(strict), 0, "{strict:#}");
    assert_eq!(count(strict, "token_order"), 0, "{strict:#}");
    assert_eq!(strict["valid"], true);
    assert!(acknowledged >= 5, "too little work got done: {strict:#}");
    assert!(
        stale(strict) >= 1,
        "no stale request was refused: {strict:#}"
    );
    // Every acknowledged add is in the final set, which the checker read itself.
    let final_size = set["final_size"].as_u64().expect("the final set was read");
    assert!(final_size >= acknowledged, "{set:#}");
    assert!(final_size <= acknowledged + set["unknown_adds"].as_u64().unwrap());
}

#[test]
fn without_fencing_the_set_workload_shows_an_acknowledged_add_missing_from_a_later_read() {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--workload",
        "set",
        "--duration",
        "10",
        "--faults",
        "freeze-after-read",
        "--fencing",
        "off",
    ];
    let result = check_json(out.path(), &args, 0);
    let off = report(&result, "off");
    assert!(faults_injected(off, "freeze-after-read") >= 1);
    let set = set_findings(off);
    let lost = set["lost"].as_array().expect("lost");
    println!(
        "off set: {} lost of {} acknowledged adds",
        lost.len(),
        set["acknowledged_adds"]
    );
    assert!(!lost.is_empty(), "no lost element without fencing: {set:#}");
    for element in lost {
        // Each names the acknowledged add and a read invoked after it completed.
        assert_eq!(element["add"]["outcome"], "ok", "{element:#}");
        let added = element["add"]["completed_s"].as_f64().unwrap();
        let missed = element["read"]["invoked_s"].as_f64().unwrap();
        assert!(missed > added, "{element:#}");
        let name = element["element"].as_str().unwrap();
        let worker = element["add"]["worker"].as_u64().unwrap();
        let op = element["add"]["op"].as_u64().unwrap();
        assert_eq!(name, format!("w{worker}-{op}"));
    }
    assert_eq!(count(set, "phantoms"), 0, "{set:#}");
    // Nothing is claimed without fencing, so the run is not a violation.
    assert_eq!(off["valid"], true);
}

/// One history event as a worker writes it, `at` seconds into a run that started at 1,000 s
/// on the monotonic clock.
fn event(
    worker: u32,
    op: u64,
    kind: &str,
    f: &str,
    at: f64,
    token: u64,
    value: Option<u64>,
) -> String {
    let mut e = serde_json::json!({
        "worker": worker, "op": op, "type": kind, "f": f,
        "mono_ns": ((1_000.0 + at) * 1e9) as u64,
        "wall_ms": 1_800_000_000_000u64, "token": token,
    });
    if let Some(v) = value {
        e["value"] = v.into();
    }
    e.to_string()
}

#[test]
fn a_hand_built_history_with_a_lost_update_a_backwards_token_and_an_overlap_is_a_violation() {
    // Worker 1 (token 5) reads 0; worker 2 (token 6) acquires after worker 1's lease is gone
    // and reads 0 too; worker 1 writes 1 after worker 2's read, and is accepted (a backwards
    // token under strict fencing); worker 2 writes 1 as well: one increment lost, while both
    // believed they held the lock from 3 s to 7 s.
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("strict");
    std::fs::create_dir(&run).unwrap();
    let w1 = [
        event(1, 1, "invoke", "lock", 0.5, 5, None),
        event(1, 1, "ok", "lock", 1.0, 5, None),
        event(1, 2, "invoke", "read", 1.5, 5, None),
        event(1, 2, "ok", "read", 2.0, 5, Some(0)),
        event(1, 3, "invoke", "write", 5.0, 5, Some(1)),
        event(1, 3, "ok", "write", 5.1, 5, Some(1)),
        event(1, 4, "invoke", "unlock", 7.0, 5, None),
        event(1, 4, "ok", "unlock", 7.1, 5, None),
    ];
    let w2 = [
        event(2, 1, "invoke", "lock", 0.6, 6, None),
        event(2, 1, "ok", "lock", 3.0, 6, None),
        event(2, 2, "invoke", "read", 3.5, 6, None),
        event(2, 2, "ok", "read", 4.0, 6, Some(0)),
        event(2, 3, "invoke", "write", 6.0, 6, Some(1)),
        event(2, 3, "ok", "write", 6.1, 6, Some(1)),
        event(2, 4, "invoke", "unlock", 8.0, 6, None),
        event(2, 4, "ok", "unlock", 8.1, 6, None),
    ];
    std::fs::write(run.join("worker-1.jsonl"), w1.join("\n") + "\n").unwrap();
    std::fs::write(run.join("worker-2.jsonl"), w2.join("\n") + "\n").unwrap();
    std::fs::write(run.join("faults.jsonl"), "").unwrap();
    std::fs::write(run.join("lock-service.jsonl"), "").unwrap();
    let meta = serde_json::json!({
        "policy": "strict", "clients": 2, "seed": 1, "ttl_s": 2, "duration_s": 10.0,
        "lock": "/l", "lock_service": "lockd", "final_value": 1,
        "start_mono_ns": 1_000_000_000_000u64, "end_mono_ns": 1_010_000_000_000u64,
    });
    std::fs::write(run.join("run.json"), meta.to_string()).unwrap();

    let result = check_json(dir.path(), &["--analyse", dir.path().to_str().unwrap()], 4);
    let strict = report(&result, "strict");
    assert_eq!(lost(strict), 1, "{strict:#}");
    assert_eq!(acknowledged(strict), 2);
    let backwards = strict["backwards_tokens"].as_array().unwrap();
    assert_eq!(backwards.len(), 1, "{strict:#}");
    assert_eq!(backwards[0]["worker"], 1);
    assert_eq!(backwards[0]["token"], 5);
    assert_eq!(backwards[0]["fence_token"], 6);
    let overlaps = strict["overlaps"]["intervals"].as_array().unwrap();
    assert_eq!(overlaps.len(), 1, "{strict:#}");
    let start = overlaps[0]["start_s"].as_f64().unwrap();
    let end = start + overlaps[0]["duration_s"].as_f64().unwrap();
    assert!(
        (start - 3.0).abs() < 1e-6 && (end - 7.0).abs() < 1e-6,
        "{overlaps:?}"
    );
    assert_eq!(strict["valid"], false);
    assert_eq!(result["valid"], false);
}

#[test]
fn faults_that_need_processes_the_checker_does_not_own_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let output = check(out.path(), &["--faults", "kill-member", "--duration", "1"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("kill-member"), "{stderr}");
    assert!(stderr.contains("--etcd-members"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let output = check(
        out.path(),
        &[
            "--endpoints",
            "127.0.0.1:1",
            "--faults",
            "freeze-lock-service",
        ],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not a process this checker started"),
        "{stderr}"
    );

    let output = check(out.path(), &["--faults", "unplug-the-moon"]);
    assert_eq!(output.status.code(), Some(2));
}

// The checker on the fence adapters (`--resource postgres|etcd`): the same set workload and
// faults against a PostgreSQL table row and a key in the lock service itself.

/// A set run's findings, after checking that strict fencing lost nothing: no lost element,
/// no phantom, no token accepted behind the fence, and some work done.
fn assert_set_safe(report: &Value) -> &Value {
    let set = set_findings(report);
    println!(
        "strict set: {} acknowledged adds, {} unknown, final set {}, {} stale rejections",
        set["acknowledged_adds"],
        set["unknown_adds"],
        set["final_size"],
        stale(report)
    );
    assert_eq!(count(set, "lost"), 0, "lost elements under strict: {set:#}");
    assert_eq!(count(set, "phantoms"), 0, "phantoms under strict: {set:#}");
    assert_eq!(backwards(report), 0, "{report:#}");
    assert_eq!(count(report, "token_order"), 0, "{report:#}");
    assert_eq!(report["valid"], true, "{report:#}");
    let acknowledged = set["acknowledged_adds"]
        .as_u64()
        .expect("acknowledged_adds");
    assert!(acknowledged >= 5, "too little work got done: {report:#}");
    let final_size = set["final_size"].as_u64().expect("the final set was read");
    assert!(final_size >= acknowledged, "{set:#}");
    set
}

/// The lost elements of a run without fencing, each checked to name an acknowledged add and
/// a read invoked after that add completed.
fn lost_elements(report: &Value) -> usize {
    let set = set_findings(report);
    let lost = set["lost"].as_array().expect("lost");
    println!(
        "unfenced set: {} lost of {} acknowledged adds",
        lost.len(),
        set["acknowledged_adds"]
    );
    for element in lost {
        assert_eq!(element["add"]["outcome"], "ok", "{element:#}");
        let added = element["add"]["completed_s"].as_f64().unwrap();
        let missed = element["read"]["invoked_s"].as_f64().unwrap();
        assert!(missed > added, "{element:#}");
    }
    assert_eq!(count(set, "phantoms"), 0, "{set:#}");
    lost.len()
}

#[test]
fn on_postgres_strict_fencing_loses_no_element_when_holders_freeze_and_postgres_is_killed() {
    if !crate::support::postgres::available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    // The checker starts its own PostgreSQL, kills it with SIGKILL and restarts it on the
    // same data; each cycle's read and write are one fenced transaction.
    let args = [
        "--resource",
        "postgres",
        "--duration",
        "15",
        "--faults",
        "freeze-holder,kill-postgres,freeze-after-read",
        "--fencing",
        "strict",
    ];
    let result = check_json(out.path(), &args, 0);
    let strict = report(&result, "strict");
    assert_eq!(result["runs"][0]["run"]["resource"], "postgres");
    assert!(faults_injected(strict, "kill-postgres") >= 1, "{strict:#}");
    let freezes =
        faults_injected(strict, "freeze-holder") + faults_injected(strict, "freeze-after-read");
    assert!(freezes >= 1, "{strict:#}");
    let set = assert_set_safe(strict);
    // Adds whose statement failed with the server gone were rolled back: failures, never
    // read back (no phantom).
    println!("failed adds: {}", set["failed_adds"]);
}

#[test]
fn on_postgres_without_the_fence_a_holder_frozen_after_its_read_loses_an_element() {
    if !crate::support::postgres::available() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--resource",
        "postgres",
        "--duration",
        "10",
        "--faults",
        "freeze-after-read",
        "--fencing",
        "off",
    ];
    let result = check_json(out.path(), &args, 0);
    let off = report(&result, "off");
    assert!(faults_injected(off, "freeze-after-read") >= 1);
    assert!(
        lost_elements(off) >= 1,
        "no lost element without the fence: {off:#}"
    );
    assert_eq!(off["valid"], true, "nothing is claimed without fencing");
}

#[test]
fn on_keys_in_the_lock_service_apply_held_loses_nothing_and_plain_puts_lose_elements() {
    let out = tempfile::tempdir().unwrap();
    // Every fault that applies (freezes, revoke, lockd frozen), once fenced, once not.
    let args = ["--resource", "etcd", "--duration", "10", "--compare"];
    let result = check_json(out.path(), &args, 0);
    let runs = result["runs"].as_array().expect("runs");
    let policies: Vec<&str> = runs.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(
        policies,
        ["strict", "off"],
        "compare runs fenced and unfenced only"
    );
    let strict = report(&result, "strict");
    assert_set_safe(strict);
    // Stale holders' Txns were refused by etcd itself: their lock key was gone.
    assert!(stale(strict) >= 1, "no write was refused: {strict:#}");
    let off = report(&result, "off");
    assert!(
        lost_elements(off) >= 1,
        "no lost element with plain puts: {off:#}"
    );
}

#[tokio::test]
async fn on_a_three_member_etcd_keys_written_with_apply_held_lose_nothing_when_members_die() {
    let Some(_slots) = crate::support::etcd::reserve(3).await else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    // The data key lives in the cluster whose members are killed and frozen.
    let args = [
        "--resource",
        "etcd",
        "--etcd-members",
        "3",
        "--duration",
        "12",
        "--faults",
        "kill-member,freeze-holder,freeze-lock-service,freeze-after-read,kill-member",
        "--fencing",
        "strict",
    ];
    let result = check_json(out.path(), &args, 0);
    let strict = report(&result, "strict");
    assert!(faults_injected(strict, "kill-member") >= 1, "{strict:#}");
    assert_set_safe(strict);
}

#[test]
fn faults_and_policies_that_do_not_apply_to_a_resource_are_refused_in_one_line() {
    let out = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], expected: &[&str]| {
        let output = check(out.path(), args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        for text in expected {
            assert!(stderr.contains(text), "{args:?}: {stderr}");
        }
    };
    refused(
        &["--resource", "postgres", "--faults", "kill-storage"],
        &["kill-storage", "kill-postgres"],
    );
    refused(
        &["--resource", "etcd", "--faults", "kill-storage"],
        &["kill-storage", "lock service"],
    );
    refused(
        &["--faults", "kill-postgres"],
        &["kill-postgres", "--resource postgres"],
    );
    refused(
        &[
            "--resource",
            "postgres",
            "--database-url",
            "postgresql://fencelock@127.0.0.1:1/postgres",
            "--faults",
            "kill-postgres",
        ],
        &["--database-url", "not a process this checker started"],
    );
    refused(
        &["--resource", "etcd", "--fencing", "writes"],
        &["--fencing writes", "etcd"],
    );
    refused(
        &["--database-url", "postgresql://127.0.0.1:1/postgres"],
        &["--database-url", "--resource postgres"],
    );
    refused(
        &["--resource", "etcd", "--faults", "isolate-holder"],
        &["isolate-holder", "--resource storage"],
    );
    refused(
        &["--endpoints", "127.0.0.1:1", "--faults", "isolate-holder"],
        &["isolate-holder", "lockd"],
    );
}

// Network faults: every process in a network namespace of its own (root only; see
// `crate::support::net`).

#[test]
fn strict_fencing_loses_no_element_when_the_holder_is_cut_off_from_lockd() {
    if !crate::support::net::available() {
        // Without test networks the fault is refused in one line, not run on loopback.
        let out = tempfile::tempdir().unwrap();
        let output = check(out.path(), &["--faults", "isolate-holder"]);
        assert_refused(&output, "isolate-holder");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--workload",
        "set",
        "--duration",
        "8",
        "--faults",
        "isolate-holder",
        "--fencing",
        "strict",
    ];
    let result = check_json(out.path(), &args, 0);
    let strict = report(&result, "strict");
    let injected = faults_injected(strict, "isolate-holder");
    println!("isolate-holder injected {injected} times");
    assert!(injected >= 1, "no holder was cut off: {strict:#}");
    let set = assert_set_safe(strict);
    println!("stale rejections: {}", stale(strict));
    assert!(set["acknowledged_adds"].as_u64() > Some(0), "{set:#}");
    // The checker has exited: no namespace may name a process that no longer exists (it
    // removed earlier runs' leftovers itself when it made its network).
    let prefix = fencelock::process::NETNS_PREFIX;
    let leftovers: Vec<String> = crate::support::net::namespaces_named(prefix)
        .into_iter()
        .filter(|name| {
            let pid = name[prefix.len()..].split('-').next().unwrap_or("");
            !Path::new(&format!("/proc/{pid}")).exists()
        })
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[tokio::test]
async fn on_a_three_member_etcd_strict_loses_nothing_when_the_leader_or_a_holder_is_cut_off() {
    let Some(_slots) = crate::support::etcd::reserve(3).await else {
        return;
    };
    if !crate::support::net::available() {
        let out = tempfile::tempdir().unwrap();
        let output = check(
            out.path(),
            &["--etcd-members", "3", "--faults", "partition-leader"],
        );
        assert_refused(&output, "partition-leader");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    // Each member, the storage, the checker and each worker on a host of its own. The
    // schedule depends only on the seed: with isolate-holder named twice, it draws both.
    let args = [
        "--workload",
        "set",
        "--etcd-members",
        "3",
        "--duration",
        "14",
        "--faults",
        "partition-leader,isolate-holder,isolate-holder",
        "--fencing",
        "strict",
    ];
    let path = out.path().to_owned();
    let result = tokio::task::spawn_blocking(move || check_json(&path, &args, 0))
        .await
        .unwrap();
    let strict = report(&result, "strict");
    let partitions = faults_injected(strict, "partition-leader");
    let isolations = faults_injected(strict, "isolate-holder");
    println!("partition-leader {partitions} times, isolate-holder {isolations} times");
    assert!(partitions >= 1 && isolations >= 1, "{strict:#}");
    // The leader was found and cut off, not skipped.
    let cut = strict["fault_spans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["fault"] == "partition-leader")
        .filter(|s| s["note"].as_str().is_some_and(|n| n.contains("cut off")))
        .count();
    assert!(cut >= 1, "no leader was cut off: {strict:#}");
    let set = assert_set_safe(strict);
    assert!(set["acknowledged_adds"].as_u64() > Some(0), "{set:#}");
}

// Clock faults: workers whose clocks run slow or fast (libfaketime; see
// `crate::support::faketime`).

#[test]
fn with_a_slow_and_a_fast_worker_clock_strict_loses_nothing_and_off_loses_elements() {
    if !crate::support::faketime::available() {
        // Without libfaketime the fault is refused in one line, not run unskewed.
        let out = tempfile::tempdir().unwrap();
        let output = Command::new(fencelock_bin())
            .args([
                "check",
                "--faults",
                "clock-skew",
                "--duration",
                "1",
                "--seed",
                "1",
                "--out",
            ])
            .arg(out.path())
            .env("FENCELOCK_FAKETIME_LIB", out.path().join("missing.so"))
            .output()
            .unwrap();
        assert_refused(&output, "clock-skew");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    // Only the clocks: worker 1's at 0.25x (its keepalives come too late and its lease ends
    // while it works on), worker 2's at 4x. Three workers, so that worker 1's lease lasts
    // through its wait in the queue often enough for it to hold the lock.
    let base = [
        "--clients",
        "3",
        "--ttl",
        "1",
        "--work",
        "0.3-1",
        "--seed",
        "7",
        "--json",
    ];
    let args = ["--duration", "12", "--faults", "clock-skew", "--compare"];
    let result = check_json_with(out.path(), &base, &args, 0);
    let strict = report(&result, "strict");
    assert_eq!(faults_injected(strict, "clock-skew"), 2, "{strict:#}");
    // Each skewed worker's span lasts the run, and holds its reads and writes.
    let skew = strict["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fault"] == "clock-skew")
        .unwrap();
    assert!(skew["operations"].as_u64() > Some(4), "{skew}");
    for span in strict["fault_spans"].as_array().unwrap() {
        let lasted = span["end_s"].as_f64().unwrap() - span["start_s"].as_f64().unwrap();
        assert!(
            lasted > 10.0,
            "a skewed clock's span lasted {lasted} s: {span}"
        );
    }
    let set = assert_set_safe(strict);
    assert!(set["acknowledged_adds"].as_u64() > Some(0), "{set:#}");
    assert!(
        stale(strict) >= 1,
        "the slow worker's stale requests: {strict:#}"
    );
    // A stamp from the skewed worker is the machine's true time: its history spans the run,
    // not a quarter of it.
    let history = std::fs::read_to_string(out.path().join("strict/worker-1.jsonl")).unwrap();
    let stamps: Vec<u64> = history
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["mono_ns"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let span_s = (stamps.iter().max().unwrap() - stamps.iter().min().unwrap()) as f64 / 1e9;
    assert!(
        span_s > 6.0,
        "worker 1's history spans only {span_s:.1} s of 10"
    );
    let off = report(&result, "off");
    assert!(
        lost_elements(off) >= 1,
        "no element lost without fencing: {off:#}"
    );
}

#[tokio::test]
async fn the_checker_and_its_workers_reach_a_mutual_tls_etcd_with_etcdctls_flags() {
    let certs = crate::support::certs::TestCerts::new();
    let Some(etcd) = crate::support::etcd::start_with(1, certs.mutual_tls()).await else {
        return;
    };
    let mut args = vec![format!("--endpoints={}", etcd.endpoints().join(","))];
    args.extend(certs.client_flags());
    args.extend(
        [
            "--faults",
            "freeze-holder",
            "--duration",
            "5",
            "--fencing",
            "strict",
        ]
        .map(String::from),
    );
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_owned();
    // Holders frozen past their lease on a cluster the workers reach only over mutual TLS.
    let result = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check_json(&dir, &args, 0)
    })
    .await
    .unwrap();
    // What is checked here is the way in (TLS for the checker and every worker); the
    // safety claims are the other tests'.
    let strict = report(&result, "strict");
    let set = set_findings(strict);
    assert_eq!(count(set, "lost"), 0, "{set:#}");
    assert_eq!(strict["valid"], true, "{strict:#}");
    assert!(set["acknowledged_adds"].as_u64() > Some(0), "{strict:#}");
}
