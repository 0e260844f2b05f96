//! Hosts of a test network reach each other across the bridge until links are cut, and
//! again after heal; nothing of the network outlives it.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::support::net;
use fencelock::process::{NetError, NetHost};

/// The port every host listens on: each host is a namespace of its own, so one port serves.
const PORT: u16 = 7000;

/// How long a connect may take before it counts as cut. Across a bridge on one machine a
/// connect takes well under a millisecond; a dropped SYN is retransmitted only after 1 s, so
/// any answer within this bound is a real one.
const CONNECT: Duration = Duration::from_millis(700);

/// A listener on `host`'s address. The kernel completes handshakes into its backlog without
/// an `accept`, so no thread needs to serve it.
fn listen(host: &NetHost) -> TcpListener {
    let addr = SocketAddr::from((host.addr(), PORT));
    host.run_sync(move || TcpListener::bind(addr))
        .expect("enter the host")
        .unwrap_or_else(|e| panic!("listen on {addr}: {e}"))
}

/// A TCP connect from inside `from` to `to`, bounded by [`CONNECT`].
fn connect(from: &NetHost, to: &NetHost) -> std::io::Result<()> {
    let addr = SocketAddr::from((to.addr(), PORT));
    from.run_sync(move || TcpStream::connect_timeout(&addr, CONNECT).map(drop))
        .expect("enter the host")
}

#[track_caller]
fn assert_reaches(hosts: &[NetHost], from: usize, to: usize) {
    if let Err(e) = connect(&hosts[from], &hosts[to]) {
        panic!("host {from} cannot reach host {to}: {e}");
    }
}

#[track_caller]
fn assert_cut(hosts: &[NetHost], from: usize, to: usize) {
    let started = Instant::now();
    match connect(&hosts[from], &hosts[to]) {
        Ok(()) => panic!("host {from} still reaches host {to}"),
        Err(e) => {
            // Dropped packets: the connect times out, it is not refused.
            assert_eq!(e.kind(), ErrorKind::TimedOut, "{from} -> {to}: {e}");
            assert!(started.elapsed() < CONNECT + Duration::from_secs(1));
        }
    }
}

#[test]
fn partitioned_hosts_cannot_connect_until_healed_and_nothing_outlives_the_network() {
    let Some(net) = net::start(3) else {
        return;
    };
    let prefix = net.netns_prefix();
    let hosts = net.hosts().to_vec();
    println!(
        "hosts {:?}",
        hosts
            .iter()
            .map(|h| h.addr().to_string())
            .collect::<Vec<_>>()
    );
    let listeners: Vec<TcpListener> = hosts.iter().map(listen).collect();

    println!("every host reaches every host");
    for from in 0..3 {
        for to in 0..3 {
            assert_reaches(&hosts, from, to);
        }
    }

    println!("partition {{0}} | {{1, 2}}: 0 is cut from both, 1 and 2 still reach each other");
    net.partition(&[0], &[1, 2]).unwrap();
    assert_eq!(net.cut_off(0).unwrap(), [1, 2]);
    assert_eq!(net.cut_off(1).unwrap(), [0]);
    for (from, to) in [(0, 1), (1, 0), (0, 2), (2, 0)] {
        assert_cut(&hosts, from, to);
    }
    for (from, to) in [(1, 2), (2, 1), (0, 0), (1, 1)] {
        assert_reaches(&hosts, from, to);
    }

    println!("heal: everyone again");
    net.heal().unwrap();
    for from in 0..3 {
        for to in 0..3 {
            assert_reaches(&hosts, from, to);
        }
    }

    println!("isolate 1: cut from both others, who still reach each other");
    net.isolate(1).unwrap();
    for (from, to) in [(1, 0), (0, 1), (1, 2), (2, 1)] {
        assert_cut(&hosts, from, to);
    }
    assert_reaches(&hosts, 0, 2);
    net.heal().unwrap();
    assert_reaches(&hosts, 1, 0);

    println!("refusals name the mistake");
    assert!(matches!(
        net.partition(&[0], &[0, 1]),
        Err(NetError::BothSides(0))
    ));
    assert!(matches!(
        net.isolate(3),
        Err(NetError::NoHost { host: 3, hosts: 3 })
    ));

    println!("drop: the run's namespaces, and with them veths, bridge and rules, are gone");
    assert_eq!(
        net::namespaces_named(&prefix).len(),
        4,
        "3 hosts and the bridge"
    );
    drop(listeners);
    drop(net);
    assert_eq!(net::namespaces_named(&prefix), Vec::<String>::new());
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link show");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(&prefix),
        "no link of the root namespace names the run: {links}"
    );
}
