//! A test that panics while it holds a network leaves nothing of it behind.

use std::sync::mpsc;

use crate::support::net;

#[test]
fn a_network_is_removed_when_its_owner_panics() {
    if !net::available() {
        return;
    }
    let (tx, rx) = mpsc::channel();
    let outcome = std::panic::catch_unwind(move || {
        let net = net::start(2).expect("available was checked");
        net.isolate(0).unwrap();
        tx.send(net.netns_prefix()).unwrap();
        panic!("a failing test, holding a network with a cut in place");
    });
    assert!(outcome.is_err(), "the closure panicked");
    let prefix = rx.recv().expect("the network was made");
    assert_eq!(
        net::namespaces_named(&prefix),
        Vec::<String>::new(),
        "nothing of {prefix} remains"
    );
}
