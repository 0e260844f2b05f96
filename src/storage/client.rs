//! [`StorageClient`]: fenced reads and writes against `fencelock storage`'s REST face.
//!
//! One pooled keep-alive HTTP client per `StorageClient`; clone it freely (clones share the
//! pool). A stale token comes back as [`ClientError::StaleToken`], so callers can branch on
//! "a newer holder exists" without parsing messages.

use std::time::Duration;

use reqwest::{StatusCode, Url};

use super::wire::{ErrorBody, FENCING_TOKEN, FenceState, KvValue, StaleBody, WrongFenceBody};
use crate::FencingToken;

/// How long one request may take before the client gives up: far above a durable commit
/// (sub-millisecond), short enough that a hung server does not hang its callers forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The errors callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The fence has seen a newer token: a newer holder of the lock exists.
    #[error("stale fencing token for fence {fence:?}: presented {presented}, current {current}")]
    StaleToken {
        fence: String,
        presented: FencingToken,
        current: FencingToken,
    },
    /// The key belongs to another fence than the one the request named: a request under
    /// the right lock name (or with none, for a key that is its own fence) is needed.
    #[error("key {key:?} belongs to {}, not to {}", fence_words(.fence.as_deref()), fence_words(.requested.as_deref()))]
    WrongFence {
        /// The key of the request.
        key: String,
        /// The lock name the key belongs to; `None` for the key's own fence.
        fence: Option<String>,
        /// The lock name the request named; `None` for the key's own fence.
        requested: Option<String>,
    },
    /// The server answered with an error other than a stale token.
    #[error("storage answered {status}: {error}: {message}")]
    Server {
        status: StatusCode,
        error: String,
        message: String,
    },
    /// The request did not get an answer (connection, timeout, undecodable body).
    #[error("storage request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("invalid storage URL {0:?}")]
    BadUrl(String),
}

fn fence_words(lock: Option<&str>) -> String {
    match lock {
        Some(name) => format!("fence {name:?}"),
        None => "its own fence".to_owned(),
    }
}

/// A value as stored, with the token of the write that stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The value.
    pub value: String,
    /// The token of the write that stored it, if that write carried one.
    pub token: Option<FencingToken>,
    /// The lock name whose fence guards the key; `None` when the key is its own fence.
    pub fence: Option<String>,
}

/// A client of one storage server.
#[derive(Clone, Debug)]
pub struct StorageClient {
    http: reqwest::Client,
    base: Url,
}

impl StorageClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .build()?;
        Self::with_http_client(base, http)
    }

    /// A client sharing an existing `reqwest::Client` (and its connection pool).
    pub fn with_http_client(base: &str, http: reqwest::Client) -> Result<Self, ClientError> {
        let base = Url::parse(base).map_err(|_| ClientError::BadUrl(base.to_owned()))?;
        if base.cannot_be_a_base() {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        Ok(StorageClient { http, base })
    }

    /// Reads `key` under `token`. Under the strict policy the read raises the fence (`fence`,
    /// or the key itself) to `token`, so an older holder can no longer write behind it.
    /// `Ok(None)` when the key holds no value.
    pub async fn read(
        &self,
        key: &str,
        token: FencingToken,
        fence: Option<&str>,
    ) -> Result<Option<Stored>, ClientError> {
        let url = self.key_url(key, fence)?;
        let response = self
            .http
            .get(url)
            .header(FENCING_TOKEN, token.get())
            .send()
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body: KvValue = check(response, token).await?.json().await?;
        Ok(Some(Stored {
            value: body.value,
            token: body.token,
            fence: body.fence,
        }))
    }

    /// Writes `value` under `key` with `token`, guarded by `fence` (or the key itself).
    pub async fn write(
        &self,
        key: &str,
        value: &str,
        token: FencingToken,
        fence: Option<&str>,
    ) -> Result<(), ClientError> {
        let url = self.key_url(key, fence)?;
        let response = self
            .http
            .put(url)
            .header(FENCING_TOKEN, token.get())
            .body(value.to_owned())
            .send()
            .await?;
        check(response, token).await?;
        Ok(())
    }

    /// The fence's current token; `None` when no token has been seen for it.
    pub async fn fence(&self, name: &str) -> Result<Option<FencingToken>, ClientError> {
        let url = self.url(&["v1", "fences", name], None)?;
        let response = self.http.get(url).send().await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body: FenceState = response.error_for_status()?.json().await?;
        Ok(Some(body.token))
    }

    /// The URL of `key`: `base/v1/kv/KEY`, or `base/v1/kv?key=KEY` for `.` and `..`, which a
    /// URL path cannot carry (URL parsers remove them as dot segments, percent-encoded too).
    fn key_url(&self, key: &str, fence: Option<&str>) -> Result<Url, ClientError> {
        if matches!(key, "." | "..") {
            let mut url = self.url(&["v1", "kv"], fence)?;
            url.query_pairs_mut().append_pair("key", key);
            Ok(url)
        } else {
            self.url(&["v1", "kv", key], fence)
        }
    }

    /// `base/segments...?fence=NAME`, each segment percent-encoded (a `/` in a key included).
    fn url(&self, segments: &[&str], fence: Option<&str>) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::BadUrl(self.base.to_string()))?
            .pop_if_empty()
            .extend(segments);
        if let Some(fence) = fence {
            url.query_pairs_mut().append_pair("fence", fence);
        }
        Ok(url)
    }
}

/// Turns an error answer into a [`ClientError`].
async fn check(
    response: reqwest::Response,
    presented: FencingToken,
) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await?;
    if status == StatusCode::CONFLICT {
        if let Ok(body) = serde_json::from_str::<StaleBody>(&text) {
            return Err(ClientError::StaleToken {
                fence: body.fence,
                presented: body.presented.unwrap_or(presented),
                current: body.current,
            });
        }
        if let Ok(body) = serde_json::from_str::<WrongFenceBody>(&text) {
            return Err(ClientError::WrongFence {
                key: body.key,
                fence: body.fence,
                requested: body.requested,
            });
        }
    }
    let (error, message) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.error, body.message),
        Err(_) => ("unexpected_answer".to_owned(), text),
    };
    Err(ClientError::Server {
        status,
        error,
        message,
    })
}
