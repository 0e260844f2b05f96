//! Waiting for a key's deletion with etcd's Watch service.
//!
//! Invariant: `deleted` returns only when the key is gone or when its caller must look again
//! (the watch was cancelled, e.g. for a compacted start revision, or its stream failed); it
//! never reports a deletion that did not happen. Callers re-read the key with a Range, which
//! makes a lost or failed watch harmless.

use tokio::sync::mpsc;
use tokio::time::sleep;
use tokio_stream::wrappers::ReceiverStream;

use super::Client;
use super::client::RETRY_PAUSE;
use super::pb::etcdserverpb as pb;
use super::pb::mvccpb::event::EventType;

/// Where a waiter's watch on its predecessor starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WatchStart {
    /// The Range's revision + 1: the first revision at which the predecessor can be deleted
    /// (it existed at the Range's revision). When nothing was written since the Range, etcd
    /// serves such a watch at once from its "synced" watcher group.
    #[default]
    AfterRange,
    /// The Range's own revision, as etcd's Go `concurrency.Mutex` does. Equally correct, but
    /// a start revision that is not in the future puts the watcher in etcd's "unsynced" group,
    /// which is caught up on a 100 ms tick. Kept to measure the difference.
    AtRange,
}

/// Outcome of one watch: the key was deleted, or the watch ended without telling.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Watched {
    Deleted,
    LookAgain,
}

/// Watches `key` from `start_revision` until a delete event arrives.
pub(crate) async fn deleted(client: &Client, key: &[u8], start_revision: i64) -> Watched {
    // `requests` lives until this function returns: closing the request side of the stream
    // could end the watch early.
    let (requests, rx) = mpsc::channel(1);
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: key.to_vec(),
                start_revision,
                // Only deletes matter; etcd drops the rest before sending.
                filters: vec![pb::watch_create_request::FilterType::Noput as i32],
                ..Default::default()
            },
        )),
    };
    // The channel has room for the one create request.
    let _ = requests.try_send(create);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    // Ask the member to cancel the watch if it loses its leader (etcd's "require leader"
    // option), so a waiter behind a partitioned member looks again instead of hanging.
    request
        .metadata_mut()
        .insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
    let mut answers = match client.watch().watch(request).await {
        Ok(answers) => answers.into_inner(),
        Err(status) => {
            tracing::debug!(%status, "watch failed to start");
            sleep(RETRY_PAUSE).await;
            return Watched::LookAgain;
        }
    };
    loop {
        match answers.message().await {
            Ok(Some(answer)) => {
                if answer
                    .events
                    .iter()
                    .any(|e| e.r#type == EventType::Delete as i32)
                {
                    return Watched::Deleted;
                }
                if answer.canceled {
                    tracing::debug!(reason = %answer.cancel_reason, "watch cancelled");
                    return Watched::LookAgain;
                }
            }
            Ok(None) | Err(_) => {
                sleep(RETRY_PAUSE).await;
                return Watched::LookAgain;
            }
        }
    }
}
