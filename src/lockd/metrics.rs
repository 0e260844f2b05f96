//! lockd's counters and gauges, exposed in Prometheus' text format (0.0.4) on `GET /metrics`.
//!
//! Every label set is closed (the gRPC methods lockd serves), so each series is a plain
//! atomic allocated up front: recording is one relaxed `fetch_add` on a call's path, with no
//! registry lock and no label hashing. What the state already knows (revision, keys, leases,
//! watchers) is not counted twice: it is read under the state lock when a scrape renders.
//!
//! Invariant: `lock_waiters` is raised once and lowered once per queued v3lock `Lock` call
//! ([`LockWaiter`] does both), so it never underflows and counts the calls still queued.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A gRPC method lockd serves, labelled as etcd's own metrics label it (`grpc_service`,
/// `grpc_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
    Watch,
    LeaseGrant,
    LeaseRevoke,
    LeaseKeepAlive,
    LeaseTimeToLive,
    LeaseLeases,
    MemberList,
    Status,
    Alarm,
    Lock,
    Unlock,
}

impl Method {
    const ALL: [Method; 16] = [
        Method::Range,
        Method::Put,
        Method::DeleteRange,
        Method::Txn,
        Method::Compact,
        Method::Watch,
        Method::LeaseGrant,
        Method::LeaseRevoke,
        Method::LeaseKeepAlive,
        Method::LeaseTimeToLive,
        Method::LeaseLeases,
        Method::MemberList,
        Method::Status,
        Method::Alarm,
        Method::Lock,
        Method::Unlock,
    ];

    /// The gRPC service and method names, as in the request path `/service/method`.
    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Method::Range => ("etcdserverpb.KV", "Range"),
            Method::Put => ("etcdserverpb.KV", "Put"),
            Method::DeleteRange => ("etcdserverpb.KV", "DeleteRange"),
            Method::Txn => ("etcdserverpb.KV", "Txn"),
            Method::Compact => ("etcdserverpb.KV", "Compact"),
            Method::Watch => ("etcdserverpb.Watch", "Watch"),
            Method::LeaseGrant => ("etcdserverpb.Lease", "LeaseGrant"),
            Method::LeaseRevoke => ("etcdserverpb.Lease", "LeaseRevoke"),
            Method::LeaseKeepAlive => ("etcdserverpb.Lease", "LeaseKeepAlive"),
            Method::LeaseTimeToLive => ("etcdserverpb.Lease", "LeaseTimeToLive"),
            Method::LeaseLeases => ("etcdserverpb.Lease", "LeaseLeases"),
            Method::MemberList => ("etcdserverpb.Cluster", "MemberList"),
            Method::Status => ("etcdserverpb.Maintenance", "Status"),
            Method::Alarm => ("etcdserverpb.Maintenance", "Alarm"),
            Method::Lock => ("v3lockpb.Lock", "Lock"),
            Method::Unlock => ("v3lockpb.Lock", "Unlock"),
        }
    }
}

/// What the state holds at the moment of a scrape, read under its lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub revision: i64,
    pub keys: usize,
    /// Bytes of live keys and values (what the backend quota bounds).
    pub key_bytes: i64,
    pub leases: usize,
    pub watch_streams: usize,
    pub watchers: usize,
}

/// lockd's counters; one instance in the core, shared by every call.
#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; Method::ALL.len()],
    lease_expiries: AtomicU64,
    lock_waiters: AtomicU64,
}

impl Metrics {
    /// One call of `method` started (for a stream: one stream opened).
    pub fn request(&self, method: Method) {
        self.requests[method as usize].fetch_add(1, Relaxed);
    }

    /// Calls of `method` started so far.
    pub fn requests(&self, method: Method) -> u64 {
        self.requests[method as usize].load(Relaxed)
    }

    /// `count` leases reached their deadline and were revoked.
    pub fn leases_expired(&self, count: usize) {
        self.lease_expiries.fetch_add(count as u64, Relaxed);
    }

    /// Counts a queued v3lock `Lock` call until the returned guard is dropped.
    pub fn lock_waiter(&self) -> LockWaiter<'_> {
        self.lock_waiters.fetch_add(1, Relaxed);
        LockWaiter(self)
    }

    /// The Prometheus text exposition (format 0.0.4) of these counters and of `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP fencelock_lockd_requests_total gRPC calls started (for a stream: streams opened), by method.\n\
             # TYPE fencelock_lockd_requests_total counter\n",
        );
        for method in Method::ALL {
            let (service, name) = method.labels();
            let _ = writeln!(
                out,
                "fencelock_lockd_requests_total{{grpc_service=\"{service}\",grpc_method=\"{name}\"}} {}",
                self.requests(method)
            );
        }
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP fencelock_lockd_{name} {help}\n\
                 # TYPE fencelock_lockd_{name} gauge\n\
                 fencelock_lockd_{name} {value}"
            );
        };
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauge(
            &mut out,
            "revision",
            "The current revision (the newest fencing token handed out).",
            gauges.revision,
        );
        gauge(&mut out, "keys", "Live keys.", count(gauges.keys));
        gauge(
            &mut out,
            "key_bytes",
            "Bytes of live keys and values, the quantity --quota-backend-bytes bounds.",
            gauges.key_bytes,
        );
        gauge(
            &mut out,
            "leases",
            "Leases granted and not yet expired or revoked.",
            count(gauges.leases),
        );
        gauge(
            &mut out,
            "watch_streams",
            "Watch streams open.",
            count(gauges.watch_streams),
        );
        gauge(
            &mut out,
            "watchers",
            "Watchers open, over all watch streams.",
            count(gauges.watchers),
        );
        gauge(
            &mut out,
            "lock_waiters",
            "v3lock Lock calls queued and not yet answered.",
            i64::try_from(self.lock_waiters.load(Relaxed)).unwrap_or(i64::MAX),
        );
        let _ = writeln!(
            out,
            "# HELP fencelock_lockd_lease_expiries_total Leases revoked because their deadline passed.\n\
             # TYPE fencelock_lockd_lease_expiries_total counter\n\
             fencelock_lockd_lease_expiries_total {}",
            self.lease_expiries.load(Relaxed)
        );
        out
    }
}

/// A queued v3lock `Lock` call, counted in `fencelock_lockd_lock_waiters` while it lives.
pub struct LockWaiter<'a>(&'a Metrics);

impl Drop for LockWaiter<'_> {
    fn drop(&mut self) {
        self.0.lock_waiters.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lists_requests_by_method_gauges_and_expiries() {
        let m = Metrics::default();
        m.request(Method::Put);
        m.request(Method::Put);
        m.leases_expired(3);
        let waiter = m.lock_waiter();
        let gauges = Gauges {
            revision: 7,
            keys: 2,
            key_bytes: 10,
            leases: 1,
            watch_streams: 1,
            watchers: 4,
        };
        let text = m.render(&gauges);
        assert!(text.contains(
            "fencelock_lockd_requests_total{grpc_service=\"etcdserverpb.KV\",grpc_method=\"Put\"} 2\n"
        ));
        assert!(text.contains(
            "fencelock_lockd_requests_total{grpc_service=\"v3lockpb.Lock\",grpc_method=\"Lock\"} 0\n"
        ));
        assert!(
            text.contains("# TYPE fencelock_lockd_revision gauge\nfencelock_lockd_revision 7\n")
        );
        assert!(text.contains("fencelock_lockd_keys 2\n"));
        assert!(text.contains("fencelock_lockd_watchers 4\n"));
        assert!(text.contains("fencelock_lockd_lock_waiters 1\n"));
        assert!(text.contains("fencelock_lockd_lease_expiries_total 3\n"));
        drop(waiter);
        assert!(
            m.render(&gauges)
                .contains("fencelock_lockd_lock_waiters 0\n")
        );
        // Every line is a comment or `name{labels} value`, as the format requires.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            assert!(series.starts_with("fencelock_lockd_"), "{line}");
            value.parse::<f64>().expect("a number");
        }
    }
}
