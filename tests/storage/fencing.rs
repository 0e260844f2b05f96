//! The fence rule end to end: the real `fencelock storage` binary over real HTTP, speaking
//! the seed's JSON protocol, under each `--fencing` policy.

use crate::support::storage::{StorageProcess, seed};
use serde_json::{Value, json};

fn write(key: &str, val: &str, token: u64) -> Value {
    json!({"op": "write", "key": key, "val": val, "version": token})
}

fn fenced_write(key: &str, val: &str, token: u64, fence: &str) -> Value {
    json!({"op": "write", "key": key, "val": val, "version": token, "fence": fence})
}

fn read(key: &str, token: u64) -> Value {
    json!({"op": "read", "key": key, "version": token})
}

fn fenced_read(key: &str, token: u64, fence: &str) -> Value {
    json!({"op": "read", "key": key, "version": token, "fence": fence})
}

fn ok(val: &str, version: u64) -> (u16, Value) {
    (200, json!({"val": val, "version": version, "err": ""}))
}

fn assert_stale(answer: &(u16, Value), presented: u64, current: u64) {
    assert_eq!(answer.0, 200, "{answer:?}");
    assert_eq!(answer.1["version"], -1, "{answer:?}");
    let err = answer.1["err"].as_str().unwrap();
    assert!(
        err.contains(&format!("presented {presented}, current {current}")),
        "unexpected error {err:?}"
    );
}

#[tokio::test]
async fn stale_write_is_rejected_equal_is_accepted_higher_raises_the_fence() {
    let dir = tempfile::tempdir().unwrap();
    let server = StorageProcess::durable(dir.path(), "strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("a holder with token 5 writes: accepted, the fence is now 5");
    assert_eq!(seed(&http, url, write("key0", "a", 5)).await, ok("a", 5));

    println!("the same holder writes again with 5: accepted (equal)");
    assert_eq!(seed(&http, url, write("key0", "b", 5)).await, ok("b", 5));

    println!("an older holder with token 4 writes: rejected, naming 4 and 5");
    assert_stale(&seed(&http, url, write("key0", "stale", 4)).await, 4, 5);

    println!("a newer holder with token 6 writes: accepted, the fence rises to 6");
    assert_eq!(seed(&http, url, write("key0", "c", 6)).await, ok("c", 6));
    assert_stale(&seed(&http, url, write("key0", "stale", 5)).await, 5, 6);

    println!("the value is the last accepted write, with its token");
    assert_eq!(seed(&http, url, read("key0", 0)).await, ok("c", 6));
}

#[tokio::test]
async fn strict_read_raises_the_fence_so_an_older_holders_later_write_is_rejected() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("A (token 5) writes counter=1");
    assert_eq!(
        seed(&http, url, fenced_write("counter", "1", 5, "/lock")).await,
        ok("1", 5)
    );
    println!("B (token 6) reads the counter: 1; the read raises the fence to 6");
    assert_eq!(
        seed(&http, url, fenced_read("counter", 6, "/lock")).await,
        ok("1", 5)
    );
    println!("A, still believing it holds the lock, writes counter=2: rejected");
    assert_stale(
        &seed(&http, url, fenced_write("counter", "2", 5, "/lock")).await,
        5,
        6,
    );
    println!("B writes counter=2 from its read: accepted, no update lost");
    assert_eq!(
        seed(&http, url, fenced_write("counter", "2", 6, "/lock")).await,
        ok("2", 6)
    );
    println!("A cannot even read any more");
    assert_stale(
        &seed(&http, url, fenced_read("counter", 5, "/lock")).await,
        5,
        6,
    );
}

#[tokio::test]
async fn writes_policy_lets_the_read_modify_write_lose_an_update() {
    let server = StorageProcess::in_memory("writes");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("A (token 5) writes counter=1; B (token 6) reads 1: under `writes` the fence stays 5");
    assert_eq!(
        seed(&http, url, fenced_write("counter", "1", 5, "/lock")).await,
        ok("1", 5)
    );
    assert_eq!(
        seed(&http, url, fenced_read("counter", 6, "/lock")).await,
        ok("1", 5)
    );
    println!("A increments to 2: accepted, because B's read did not raise the fence");
    assert_eq!(
        seed(&http, url, fenced_write("counter", "2", 5, "/lock")).await,
        ok("2", 5)
    );
    println!("B writes 2 from its stale read: accepted; A's increment is lost");
    assert_eq!(
        seed(&http, url, fenced_write("counter", "2", 6, "/lock")).await,
        ok("2", 6)
    );
    println!("writes are still checked: A's next write is rejected");
    assert_stale(
        &seed(&http, url, fenced_write("counter", "3", 5, "/lock")).await,
        5,
        6,
    );
}

#[tokio::test]
async fn one_fence_guards_several_keys() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("token 7 writes `a` under fence /lock");
    assert_eq!(
        seed(&http, url, fenced_write("a", "1", 7, "/lock")).await,
        ok("1", 7)
    );
    println!("token 6 writes `b`, another key under the same fence: rejected");
    assert_stale(
        &seed(&http, url, fenced_write("b", "1", 6, "/lock")).await,
        6,
        7,
    );
    println!("token 6 writes `b` without a fence: `b` is its own fence, accepted");
    assert_eq!(seed(&http, url, write("b", "own", 6)).await, ok("own", 6));
    println!("token 8 writes `c` under /lock: accepted, and `a` is now closed to 7");
    assert_eq!(
        seed(&http, url, fenced_write("c", "1", 8, "/lock")).await,
        ok("1", 8)
    );
    assert_stale(
        &seed(&http, url, fenced_write("a", "2", 7, "/lock")).await,
        7,
        8,
    );
}

#[tokio::test]
async fn strict_write_without_a_token_is_refused_and_a_plain_read_is_allowed() {
    let server = StorageProcess::in_memory("strict");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("a write with version 0 (no token) is refused");
    let (status, body) = seed(&http, url, write("k", "v", 0)).await;
    assert_eq!((status, &body["version"]), (200, &json!(-1)));
    assert!(
        body["err"]
            .as_str()
            .unwrap()
            .contains("must carry a fencing token")
    );

    println!("a read without a token is a plain read, and a missing key answers like the seed");
    assert_eq!(
        seed(&http, url, read("k", 0)).await,
        (
            200,
            json!({"val": "", "version": -1, "err": "key not found"})
        )
    );
    assert_eq!(seed(&http, url, write("k", "v", 3)).await, ok("v", 3));
    assert_eq!(seed(&http, url, read("k", 0)).await, ok("v", 3));
}

#[tokio::test]
async fn seed_policy_reproduces_the_seed_walkthrough() {
    let server = StorageProcess::in_memory("seed");
    let http = crate::support::http_client();
    let url = &server.url;
    // The walkthrough's numbers: the seed sends lease IDs as versions.
    let client1: u64 = 4703569812595502721;
    let client2: u64 = 4703569812595502727;

    println!("client 1 acquires the lock and freezes; its lease expires; client 2 acquires");
    println!("client 2 writes: accepted");
    assert_eq!(
        seed(&http, url, write("key0", "client 2", client2)).await,
        ok("client 2", client2)
    );
    println!("client 1 wakes up and writes: rejected with the seed's message");
    assert_eq!(
        seed(&http, url, write("key0", "client 1", client1)).await,
        (
            200,
            json!({
                "val": "",
                "version": -1,
                "err": format!(
                    "given version ({client1:x}) is different from the existing version ({client2:x})"
                )
            })
        )
    );
    println!("the seed's flaw, kept on purpose: a newer holder is rejected too");
    let (_, body) = seed(&http, url, write("key0", "client 3", client2 + 1)).await;
    assert_eq!(body["version"], -1);
    println!("reads are not checked at all");
    assert_eq!(
        seed(&http, url, read("key0", 1)).await,
        ok("client 2", client2)
    );
}

#[tokio::test]
async fn off_policy_accepts_stale_tokens() {
    let server = StorageProcess::in_memory("off");
    let http = crate::support::http_client();
    let url = &server.url;

    println!("token 9, then token 1, then no token: all accepted");
    assert_eq!(seed(&http, url, write("k", "new", 9)).await, ok("new", 9));
    assert_eq!(seed(&http, url, write("k", "old", 1)).await, ok("old", 1));
    assert_eq!(seed(&http, url, write("k", "none", 0)).await, ok("none", 0));
    assert_eq!(seed(&http, url, read("k", 2)).await, ok("none", 0));
}
