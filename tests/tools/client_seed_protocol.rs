//! `fencelock client 1|2 --protocol seed` against a storage that speaks only the seed's
//! protocol, the way the seed's own storage does: `POST /` with `{"op","key","val","version"}`,
//! an equality check of `version` per key, and an exit on the first request that is anything
//! else. The seed's manual walkthrough, played with fencelock's client: client 2 accepted,
//! client 1 refused, exit 3.

use crate::both_backends;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::backend::Service;
use crate::support::proc::{ChildGuard, fencelock_bin, wait_for};
use serde::Deserialize;

/// Bound for anything a healthy local service does at once (start, acquire, write).
const PROMPTLY: Duration = Duration::from_secs(10);

/// Exactly the seed's request: anything else (another field, such as a fence) ends the
/// stand-in, as an undecodable body ends the seed's storage.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedRequest {
    op: String,
    key: String,
    #[serde(default)]
    val: String,
    #[serde(default)]
    version: u64,
}

/// A storage that speaks only the seed protocol, on a loopback port, in a thread of the test.
struct SeedOnlyStorage {
    url: String,
    /// Set when a request was not the seed's: the stand-in stopped serving there.
    exited: Arc<AtomicBool>,
    data: Arc<Mutex<HashMap<String, (String, u64)>>>,
}

impl SeedOnlyStorage {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let exited = Arc::new(AtomicBool::new(false));
        let data = Arc::new(Mutex::new(HashMap::new()));
        let (flag, map) = (exited.clone(), data.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                if serve(stream, &map).is_none() {
                    flag.store(true, Ordering::SeqCst);
                    // Dropping the listener refuses every later connection: the process is gone.
                    return;
                }
            }
        });
        SeedOnlyStorage { url, exited, data }
    }
}

/// Serves one connection's requests; `None` when a request was not the seed's.
fn serve(stream: TcpStream, data: &Mutex<HashMap<String, (String, u64)>>) -> Option<()> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).ok()? == 0 {
            return Some(()); // the client closed its connection
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).ok()?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        if !request_line.starts_with("POST / ") {
            return None;
        }
        let request: SeedRequest = serde_json::from_slice(&body).ok()?;
        let mut data = data.lock().unwrap();
        let answer = match request.op.as_str() {
            "write" => match data.get(&request.key) {
                Some((_, current)) if *current != request.version => serde_json::json!({
                    "val": "", "version": -1,
                    "err": format!("given version ({:x}) is different from the existing version ({current:x})", request.version),
                }),
                _ => {
                    data.insert(request.key, (request.val.clone(), request.version));
                    serde_json::json!({"val": request.val, "version": request.version, "err": ""})
                }
            },
            "read" => match data.get(&request.key) {
                Some((val, version)) => serde_json::json!({"val": val, "version": version, "err": ""}),
                None => serde_json::json!({"val": "", "version": -1, "err": "key not found"}),
            },
            _ => return None,
        }
        .to_string();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        )
        .ok()?;
    }
}

fn client(n: u8, endpoints: &[String], storage: &str) -> Command {
    let mut cmd = Command::new(fencelock_bin());
    cmd.args(["client", &n.to_string(), "--protocol", "seed"])
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--storage", storage, "--lock", "/lock", "--json"])
        .env_remove("ETCDCTL_ENDPOINTS")
        .env("RUST_LOG", "warn");
    cmd
}

async fn the_seed_walkthrough_with_fencelocks_client_against_a_seed_only_storage(service: Service) {
    let endpoints = service.endpoints();
    let storage = SeedOnlyStorage::start();

    println!("client 1 acquires /lock and waits for Enter");
    let mut first = client(1, &endpoints, &storage.url);
    first.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut first = ChildGuard::spawn("fencelock client 1", &mut first);
    let mut stdin = first.child_mut().stdin.take().unwrap();
    let mut lines = BufReader::new(first.child_mut().stdout.take().unwrap()).lines();
    let acquired: serde_json::Value = loop {
        let line = lines.next().expect("client 1 reports").unwrap();
        println!("{line}");
        if line.contains(r#""event":"acquired""#) {
            break serde_json::from_str(&line).unwrap();
        }
    };
    let lease = acquired["lease"].as_str().unwrap().to_owned();

    println!("etcdctl lease revoke {lease}");
    service.etcdctl(&["lease", "revoke", &lease]);

    println!("client 2 acquires and writes at once: accepted");
    let second = client(2, &endpoints, &storage.url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&second.stdout));
    assert_eq!(
        second.status.code(),
        Some(0),
        "client 2's write is accepted"
    );
    assert!(!storage.exited.load(Ordering::SeqCst), "only seed requests");

    println!("Enter for client 1: refused by the seed's check, exit 3");
    stdin.write_all(b"\n").unwrap();
    drop(stdin);
    let status = first.wait_exit(PROMPTLY);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    println!("{rest:#?}");
    assert_eq!(status.code(), Some(3), "client 1's stale write exits 3");
    let wrote = rest
        .iter()
        .find(|l| l.contains(r#""event":"wrote""#))
        .expect("client 1 reports its write");
    assert!(wrote.contains(r#""outcome":"stale""#), "{wrote}");
    assert!(
        !storage.exited.load(Ordering::SeqCst),
        "the stand-in never saw anything but the seed protocol"
    );
    let data = storage.data.lock().unwrap();
    assert_eq!(
        data.get("key0").map(|(val, _)| val.as_str()),
        Some("written by client 2")
    );
}
both_backends!(the_seed_walkthrough_with_fencelocks_client_against_a_seed_only_storage);

/// The stand-in is strict: the REST face's requests end it, as they would end the seed's
/// storage, so the test above would notice a client that strays from the seed protocol.
#[test]
fn the_seed_only_storage_stops_on_a_request_that_is_not_the_seeds() {
    let storage = SeedOnlyStorage::start();
    let addr = storage.url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "PUT /v1/kv/key0 HTTP/1.1\r\ncontent-length: 1\r\n\r\nx"
    )
    .unwrap();
    wait_for("the stand-in to stop", PROMPTLY, || {
        storage.exited.load(Ordering::SeqCst).then_some(())
    });
    wait_for("connections to be refused", PROMPTLY, || {
        TcpStream::connect(&addr).is_err().then_some(())
    });
}
