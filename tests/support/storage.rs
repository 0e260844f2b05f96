//! A `fencelock storage` process for tests: started on `127.0.0.1:0`, its real address read
//! from the readiness line it prints once ready (`fencelock::process::READY_PREFIX`), killed on drop.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::proc::{ChildGuard, fencelock_bin};

/// How long a server may take to open its store and print its address.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct StorageProcess {
    pub child: ChildGuard,
    /// `http://127.0.0.1:PORT`, or `https://` when started with `--cert-file`.
    pub url: String,
}

impl StorageProcess {
    /// Durable storage on `data_dir` with the given `--fencing` policy.
    pub fn durable(data_dir: &Path, policy: &str) -> Self {
        let dir = data_dir.to_str().expect("UTF-8 temp path");
        Self::start(&["--data-dir", dir, "--fencing", policy])
    }

    /// In-memory storage with the given `--fencing` policy.
    pub fn in_memory(policy: &str) -> Self {
        Self::start(&["--in-memory", "--fencing", policy])
    }

    /// `fencelock storage --listen 127.0.0.1:0 <args>`, once it says where it listens.
    /// Its log goes to the test's stderr when `FENCELOCK_TEST_LOG` is set.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(fencelock_bin());
        cmd.args(["storage", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("FENCELOCK_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        let mut child = ChildGuard::spawn("fencelock storage", &mut cmd);
        let stdout = child.child_mut().stdout.take().expect("piped stdout");
        let scheme = if args.iter().any(|a| a.starts_with("--cert-file")) {
            "https"
        } else {
            "http"
        };
        let url = match fencelock::process::read_ready_addr(stdout, READY_TIMEOUT) {
            Some(addr) => format!("{scheme}://{addr}"),
            None => panic!("storage did not print its address within {READY_TIMEOUT:?}"),
        };
        StorageProcess { child, url }
    }

    /// SIGKILL: no shutdown code runs, only what is already durable survives.
    pub fn kill_9(&mut self) {
        self.child.kill();
    }
}

/// An answer: status and JSON body (`Value::Null` when the body is not JSON).
pub type Answer = (u16, serde_json::Value);

/// POSTs raw bytes to `/` (the seed protocol).
pub async fn post_raw(http: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>) -> Answer {
    let response = http
        .post(format!("{url}/"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("storage answers");
    answer(response).await
}

/// POSTs a seed-protocol request to `/`.
pub async fn seed(http: &reqwest::Client, url: &str, request: serde_json::Value) -> Answer {
    post_raw(http, url, request.to_string()).await
}

/// Reads the status and the JSON body of a response.
pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("answer body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}
