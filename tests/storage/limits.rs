//! The storage's bounds on connections and queued request bodies: past either, a 503 with a
//! JSON error, and everyone else still served. Raw HTTP/1.1 over TCP, so a test can hold a
//! connection open or stop halfway through a body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::support::proc::wait_for;
use crate::support::storage::StorageProcess;

const DEADLINE: Duration = Duration::from_secs(10);

fn addr(server: &StorageProcess) -> SocketAddr {
    server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the storage");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// An answer read off the wire: status, headers (lower-cased names), body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Reads one answer (with a `content-length`) from `stream`.
fn read_answer(stream: &mut TcpStream) -> Raw {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("an answer");
        assert_eq!(n, 1, "connection closed inside the answer's head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).expect("an ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("the answer's body");
    Raw {
        status: status.parse().unwrap(),
        headers,
        body,
    }
}

/// Sends one request on `stream` and reads its answer.
fn exchange(stream: &mut TcpStream, method: &str, path: &str, body: &[u8]) -> Raw {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: storage\r\nfencing-token: 1\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // One write, so the whole request is on its way before the server answers. A server
    // that refuses on the head alone may answer and close before the body is all read; a
    // write that then fails is no error here: the answer is what the test reads.
    let request = [head.as_bytes(), body].concat();
    if let Err(e) = stream.write_all(&request) {
        println!("the request's write ended early ({e}); reading the answer");
    }
    read_answer(stream)
}

/// The value of the metric line `name` (with its labels), read on a fresh connection.
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut stream = connect(addr);
    let answer = exchange(&mut stream, "GET", "/metrics", b"");
    let text = String::from_utf8(answer.body).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn assert_busy(answer: &Raw, bound: &str) {
    assert_eq!(
        answer.status,
        503,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    let body = answer.json();
    assert_eq!(body["error"], "busy", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(bound), "{message:?} names {bound}");
    assert_eq!(answer.header("retry-after"), Some("1"));
}

#[test]
fn bodies_past_max_queued_bytes_are_answered_busy_and_the_held_one_completes() {
    const MIB: usize = 1 << 20;
    let server = StorageProcess::start(&[
        "--in-memory",
        "--max-body",
        &MIB.to_string(),
        "--max-queued-bytes",
        &MIB.to_string(),
    ]);
    let addr = addr(&server);

    println!("a 1 MiB PUT, sent halfway: its declared length fills the queue");
    let mut slow = connect(addr);
    let head = format!(
        "PUT /v1/kv/slow HTTP/1.1\r\nhost: storage\r\nfencing-token: 1\r\ncontent-length: {MIB}\r\n\r\n"
    );
    slow.write_all(head.as_bytes()).unwrap();
    let value = vec![b'x'; MIB];
    slow.write_all(&value[..MIB / 2]).unwrap();
    wait_for("the queue to hold the slow body", DEADLINE, || {
        let queued = metric(addr, "fencelock_storage_queued_body_bytes")?;
        (queued == MIB as f64).then_some(())
    });

    // Above the size left uncounted (4 KiB), yet with its head under the 8 KiB the server
    // reads at once: refused before the body is asked for, the request is still read whole,
    // so the connection stays usable.
    println!("a 6,000-byte PUT meanwhile: 503 busy, not written");
    let mut other = connect(addr);
    let refused = exchange(&mut other, "PUT", "/v1/kv/small", &[b'y'; 6000]);
    assert_busy(&refused, "--max-queued-bytes");
    let missing = exchange(&mut other, "GET", "/v1/kv/small", b"");
    assert_eq!(missing.status, 404, "the refused write left nothing");
    assert_eq!(
        metric(addr, "fencelock_storage_busy_total{bound=\"queued_bytes\"}"),
        Some(1.0)
    );

    println!("the rest of the slow body: it is stored whole, and the queue is free again");
    slow.write_all(&value[MIB / 2..]).unwrap();
    let stored = read_answer(&mut slow);
    assert_eq!(stored.status, 200, "{:?}", stored.json());
    let read = exchange(&mut other, "GET", "/v1/kv/slow", b"");
    assert_eq!(read.json()["value"].as_str().map(str::len), Some(MIB));
    let written = exchange(&mut other, "PUT", "/v1/kv/small", &[b'y'; 8192]);
    assert_eq!(written.status, 200, "{:?}", written.json());
    assert_eq!(
        metric(addr, "fencelock_storage_queued_body_bytes"),
        Some(0.0)
    );
}

#[test]
fn a_connection_past_max_connections_is_answered_busy_and_a_freed_slot_is_reused() {
    let server = StorageProcess::start(&["--in-memory", "--max-connections", "2"]);
    let addr = addr(&server);

    println!("two connections, each answered once and kept open");
    let mut first = connect(addr);
    let mut second = connect(addr);
    for stream in [&mut first, &mut second] {
        assert_eq!(exchange(stream, "GET", "/healthz", b"").status, 200);
    }

    println!("a third: 503 busy, then closed");
    let mut third = connect(addr);
    let refused = exchange(&mut third, "GET", "/healthz", b"");
    assert_busy(&refused, "--max-connections");
    let mut rest = Vec::new();
    let closed = third.read_to_end(&mut rest);
    assert!(
        matches!(closed, Ok(0)),
        "the refused connection is closed: {closed:?} {rest:?}"
    );

    println!("the kept connections are still served");
    assert_eq!(exchange(&mut second, "GET", "/healthz", b"").status, 200);

    println!("the first closes: its slot takes a new connection");
    drop(first);
    let mut fourth = wait_for("a free connection slot", DEADLINE, || {
        let mut stream = connect(addr);
        let answer = exchange(&mut stream, "GET", "/healthz", b"");
        (answer.status == 200).then_some(stream)
    });
    let answer = exchange(&mut fourth, "GET", "/metrics", b"");
    let text = String::from_utf8(answer.body).unwrap();
    assert!(text.contains("fencelock_storage_connections 2\n"), "{text}");
    assert!(
        !text.contains("fencelock_storage_busy_total{bound=\"connections\"} 0\n"),
        "{text}"
    );
}
