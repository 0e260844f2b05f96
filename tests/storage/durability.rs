//! Durability and concurrency: acknowledged requests survive `kill -9`, fences never go
//! back, and concurrent writers on distinct keys lose nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::proc::{Signal, exit_and_stderr, fencelock_bin};
use crate::support::storage::{StorageProcess, answer, seed};
use serde_json::json;

/// Writers running while the server is killed.
const KILL_WRITERS: usize = 8;
/// Acknowledged requests to wait for before the kill, so the kill lands mid-stream.
const ACKS_BEFORE_KILL: u64 = 2_000;

/// What one writer knows was acknowledged before the server died.
#[derive(Default, Debug, Clone, Copy)]
struct Acked {
    /// Highest token of an acknowledged write (its value is the token, as text).
    write: u64,
    /// Highest token the fence was acknowledged at (writes and strict reads raise it).
    fence: u64,
}

#[tokio::test]
async fn kill_9_during_concurrent_writes_loses_no_acknowledged_write_and_no_fence_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = StorageProcess::durable(dir.path(), "strict");
    let url = server.url.clone();
    let acks = Arc::new(AtomicU64::new(0));

    println!(
        "{KILL_WRITERS} writers: each raises its own key's fence with writes and strict reads"
    );
    let mut writers = Vec::new();
    for w in 0..KILL_WRITERS {
        let (url, acks) = (url.clone(), acks.clone());
        writers.push(tokio::spawn(async move {
            let http = crate::support::http_client();
            let key = format!("k{w}");
            let mut acked = Acked::default();
            for token in 1u64.. {
                // Every third request is a read carrying a new token: it raises the fence.
                let request = if token % 3 == 0 {
                    json!({"op": "read", "key": key, "version": token})
                } else {
                    json!({"op": "write", "key": key, "val": token.to_string(), "version": token})
                };
                let response = http
                    .post(format!("{url}/"))
                    .body(request.to_string())
                    .send()
                    .await;
                // The kill may cut a request or its answer anywhere: that request is simply
                // not acknowledged.
                let Ok(response) = response else { break };
                let status = response.status();
                let Ok(bytes) = response.bytes().await else {
                    break;
                };
                let Ok(body) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                    break;
                };
                assert_eq!((status.as_u16(), &body["err"]), (200, &json!("")), "{body}");
                if token % 3 != 0 {
                    acked.write = token;
                }
                acked.fence = token;
                acks.fetch_add(1, Ordering::Relaxed);
            }
            (key, acked)
        }));
    }

    // Waiting on progress, not on time: the kill must land while the writers are busy.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.load(Ordering::Relaxed) < ACKS_BEFORE_KILL {
        assert!(Instant::now() < deadline, "writers made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "kill -9 after {} acknowledged requests",
        acks.load(Ordering::Relaxed)
    );
    server.kill_9();
    let mut acked = HashMap::new();
    for writer in writers {
        let (key, a) = writer.await.unwrap();
        acked.insert(key, a);
    }

    println!("restart on the same data directory");
    let server = StorageProcess::durable(dir.path(), "strict");
    let http = crate::support::http_client();
    for (key, a) in &acked {
        println!(
            "{key}: acknowledged write {}, acknowledged fence {}",
            a.write, a.fence
        );
        assert!(a.write > 0, "{key} never got a write acknowledged");

        let (_, body) = seed(&http, &server.url, json!({"op": "read", "key": key})).await;
        let version = body["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} lost: {body}"));
        assert!(
            version >= a.write,
            "{key}: acknowledged write {} lost, found {version}",
            a.write
        );
        assert_eq!(
            body["val"],
            version.to_string(),
            "{key}: value and token disagree"
        );

        // Each key is its own fence here (the seed protocol names none), which the key's
        // REST answer shows with its token.
        let response = http
            .get(format!("{}/v1/kv/{key}", server.url))
            .send()
            .await
            .unwrap();
        let (status, fence) = answer(response).await;
        assert_eq!(status, 200, "{key}: value gone: {fence}");
        assert_eq!(fence["own_fence"], true, "{key}: {fence}");
        let current = fence["fence_token"]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: fence gone: {fence}"));
        assert!(
            current >= a.fence,
            "{key}: fence went back from {} to {current}",
            a.fence
        );

        let stale = json!({"op": "write", "key": key, "val": "stale", "version": a.fence - 1});
        let (_, body) = seed(&http, &server.url, stale).await;
        assert_eq!(
            body["version"], -1,
            "{key}: a token below the fence was accepted: {body}"
        );
    }
}

#[tokio::test]
async fn thirty_two_concurrent_writers_on_distinct_keys_lose_no_acknowledged_write() {
    const WRITERS: usize = 32;
    const RUN_FOR: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let server = StorageProcess::durable(dir.path(), "strict");
    let url = server.url.clone();

    println!("{WRITERS} writers, each writing new keys for {RUN_FOR:?}");
    let stop = Instant::now() + RUN_FOR;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let http = crate::support::http_client();
            let mut acked = Vec::new();
            for n in 0u64.. {
                if Instant::now() >= stop {
                    break;
                }
                let key = format!("w{w}-{n}");
                let val = format!("value {w} {n}");
                let request = json!({"op": "write", "key": key, "val": val, "version": 1});
                let (status, body) = seed(&http, &url, request).await;
                assert_eq!((status, &body["err"]), (200, &json!("")), "{body}");
                acked.push((key, val));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.unwrap());
    }
    println!(
        "{} writes acknowledged; reading every one back",
        acked.len()
    );
    assert!(acked.len() >= WRITERS, "too few writes to mean anything");

    let acked = Arc::new(acked);
    let mut readers = Vec::new();
    for r in 0..WRITERS {
        let (url, acked) = (url.clone(), acked.clone());
        readers.push(tokio::spawn(async move {
            let http = crate::support::http_client();
            for (key, val) in acked.iter().skip(r).step_by(WRITERS) {
                let (_, body) = seed(&http, &url, json!({"op": "read", "key": key})).await;
                assert_eq!(body, json!({"val": val, "version": 1, "err": ""}), "{key}");
            }
        }));
    }
    for reader in readers {
        reader.await.unwrap();
    }
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    // The smallest block cache serves as well; the restart uses the default.
    let mut server = StorageProcess::start(&["--data-dir", data_dir, "--cache-size", "1MiB"]);
    let http = crate::support::http_client();

    println!("write under fence /lock with token 12, then SIGTERM");
    let write = json!({"op": "write", "key": "k", "val": "v", "version": 12, "fence": "/lock"});
    assert_eq!(seed(&http, &server.url, write).await.1["err"], "");
    server.child.signal(Signal::TERM);
    let status = server.child.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");

    println!("restart: the value and the fence are there");
    let server = StorageProcess::durable(dir.path(), "strict");
    let (_, body) = seed(&http, &server.url, json!({"op": "read", "key": "k"})).await;
    assert_eq!(body, json!({"val": "v", "version": 12, "err": ""}));
    let (status, body) = answer(
        http.get(format!("{}/v1/fences//lock", server.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"fence": "/lock", "token": 12}))
    );
}

#[test]
fn a_cache_size_below_1mib_or_for_the_in_memory_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let refused = |args: &[&str]| {
        let mut cmd = std::process::Command::new(fencelock_bin());
        cmd.args(["storage", "--listen=127.0.0.1:0"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        exit_and_stderr("fencelock storage", &mut cmd, Duration::from_secs(10))
    };
    let dir_arg = format!("--data-dir={}", data_dir.display());
    for (args, mentions) in [
        (vec![dir_arg.as_str(), "--cache-size=512KiB"], "1MiB"),
        (vec![dir_arg.as_str(), "--cache-size=lots"], "not a size"),
        (vec!["--in-memory", "--cache-size=1GiB"], "--in-memory"),
    ] {
        let (code, stderr) = refused(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(mentions), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(
        !data_dir.exists(),
        "a refused start created its data directory"
    );
}
