//! Refusals on both lock services (`crate::support::backend`: a real etcd from `crate::support::etcd`, and
//! `fencelock lockd`): each bad request gets the same gRPC code and message from lockd as from
//! etcd, changes nothing, and the service keeps serving.

use crate::both_backends;

use std::time::Duration;

use crate::support::backend::Service;
use fencelock::etcd::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    compare, request_op,
};
use fencelock::lock::Client;
use tokio_stream::StreamExt as _;
use tonic::Code;

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    }
}

fn put_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put(key))),
    }
}

/// Asserts that `result` is a refusal with `code` and exactly etcd's `message`.
fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.expect_err(message);
    println!("{:?}: {}", status.code(), status.message());
    assert_eq!(status.code(), code, "{status}");
    assert_eq!(status.message(), message);
}

/// A lease ID no one has granted on this service.
async fn unknown_lease(client: &Client) -> i64 {
    let grant = LeaseGrantRequest { ttl: 30, id: 0 };
    let id = client
        .lease()
        .lease_grant(grant)
        .await
        .unwrap()
        .into_inner()
        .id;
    client
        .lease()
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap();
    id
}

async fn key_and_revision_refusals_read_as_etcds(service: Service) {
    let client = Client::connect(service.endpoints()).await.unwrap();
    let mut kv = client.kv();
    let start = kv.put(put("/err/a")).await.unwrap().into_inner();
    let revision = start.header.unwrap().revision;

    refused(
        kv.put(put("")).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    let ignore_value = PutRequest {
        key: b"/err/missing".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    refused(
        kv.put(ignore_value).await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    );
    refused(
        kv.delete_range(DeleteRangeRequest::default()).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    let future = RangeRequest {
        key: b"/err/a".to_vec(),
        revision: revision + 1000,
        ..Default::default()
    };
    refused(
        kv.range(future).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );

    kv.put(put("/err/a")).await.unwrap();
    let latest = kv.put(put("/err/a")).await.unwrap().into_inner();
    let compact = CompactionRequest {
        revision: latest.header.unwrap().revision,
        physical: false,
    };
    kv.compact(compact).await.unwrap();
    let past = RangeRequest {
        key: b"/err/a".to_vec(),
        revision,
        ..Default::default()
    };
    refused(
        kv.range(past).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    refused(
        kv.compact(CompactionRequest {
            revision,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );

    let twice = TxnRequest {
        success: vec![put_op("/err/t"), put_op("/err/t")],
        ..Default::default()
    };
    refused(
        kv.txn(twice).await,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let too_many = TxnRequest {
        success: (0..129)
            .map(|i| put_op(&format!("/err/many/{i}")))
            .collect(),
        ..Default::default()
    };
    refused(
        kv.txn(too_many).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );

    // Nothing refused was written, and the service still serves.
    let written = RangeRequest {
        key: b"/err/".to_vec(),
        range_end: b"/err0".to_vec(),
        keys_only: true,
        ..Default::default()
    };
    let keys: Vec<_> = kv.range(written).await.unwrap().into_inner().kvs;
    let keys: Vec<_> = keys.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, [b"/err/a".to_vec()]);
}

async fn lease_refusals_read_as_etcds(service: Service) {
    let client = Client::connect(service.endpoints()).await.unwrap();
    let mut lease = client.lease();
    let gone = unknown_lease(&client).await;

    let with_gone_lease = PutRequest {
        lease: gone,
        ..put("/lease-err/k")
    };
    refused(
        client.kv().put(with_gone_lease.clone()).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let in_txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: b"/lease-err/k".to_vec(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(with_gone_lease)),
        }],
        failure: Vec::new(),
    };
    refused(
        client.kv().txn(in_txn).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    refused(
        lease.lease_revoke(LeaseRevokeRequest { id: gone }).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );

    let held = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    refused(
        lease
            .lease_grant(LeaseGrantRequest { ttl: 30, id: held })
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    refused(
        lease
            .lease_grant(LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            })
            .await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );

    // Not refusals: a lease that is gone reads as TTL -1, and its keep-alive is answered TTL 0.
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: gone,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.ttl, -1, "{ttl:?}");
    let (requests, rx) = tokio::sync::mpsc::channel(1);
    requests
        .send(LeaseKeepAliveRequest { id: gone })
        .await
        .unwrap();
    let mut answers = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .expect("answered")
        .expect("the stream stays open")
        .unwrap();
    assert_eq!((answer.id, answer.ttl), (gone, 0));
    assert!(
        client.lock_keys("/lease-err").await.unwrap().is_empty(),
        "nothing was written with the lost lease"
    );
}

both_backends!(
    key_and_revision_refusals_read_as_etcds,
    lease_refusals_read_as_etcds,
);
