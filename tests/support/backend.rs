//! The lock service a test runs against: a real single-member etcd or `fencelock lockd`, and
//! the `both_backends!` macro that runs one test body on each.
//!
//! - Etcd keeps its skip rule (`support::etcd`): without an etcd binary `start` returns
//!   `None` unless `FENCELOCK_REQUIRE_ETCD=1`. lockd is built with the tests and never skips.
//! - Each generated test is named after its backend (`<name>::etcd`, `<name>::lockd`), so
//!   `cargo test -- ::lockd` runs one side only.

use super::etcd::{self, TestEtcd};
use super::lockd::LockdProcess;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Etcd,
    Lockd,
}

/// A running lock service, stopped when dropped.
pub enum Service {
    Etcd(TestEtcd),
    Lockd(LockdProcess),
}

impl Service {
    pub fn backend(&self) -> Backend {
        match self {
            Service::Etcd(_) => Backend::Etcd,
            Service::Lockd(_) => Backend::Lockd,
        }
    }

    /// Client endpoints as `127.0.0.1:PORT`, accepted by `Client::connect` and `etcdctl`.
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Service::Etcd(etcd) => etcd.endpoints(),
            Service::Lockd(lockd) => lockd.endpoints(),
        }
    }

    /// `etcdctl` against this service; panics with its stderr if it fails.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        etcd::etcdctl(&self.endpoints(), args)
    }
}

/// Waits until lock `name` has exactly `count` lock keys (holder and waiters), or panics
/// after 10 s.
pub async fn wait_for_keys(client: &fencelock::lock::Client, name: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let keys = client.lock_keys(name).await.expect("lock keys");
        if keys.len() == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} keys under {name}, have {keys:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Starts a one-member service of `backend`, or `None` when the test is skipped.
pub async fn start(backend: Backend) -> Option<Service> {
    match backend {
        Backend::Etcd => etcd::start(1).await.map(Service::Etcd),
        Backend::Lockd => Some(Service::Lockd(LockdProcess::start())),
    }
}

/// Runs `async fn name(service: Service)` against each backend, as two `#[tokio::test]`s
/// named `name::etcd` and `name::lockd`:
///
/// ```ignore
/// async fn tokens_increase(service: Service) {
///     let client = Client::connect(service.endpoints()).await.unwrap();
///     // ...
/// }
/// both_backends!(tokens_increase);
/// ```
///
/// The test body stays an ordinary function, so rustfmt and the compiler's messages treat
/// it like any other code.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            use $crate::support::backend::{Backend, start};

            #[tokio::test]
            async fn etcd() {
                if let Some(service) = start(Backend::Etcd).await {
                    super::$name(service).await;
                }
            }

            #[tokio::test]
            async fn lockd() {
                let service = start(Backend::Lockd).await.expect("lockd never skips");
                super::$name(service).await;
            }
        }
    )+};
}
