//! [`StorageClient`]: fenced reads and writes against `fencelock storage`'s REST face.
//!
//! One pooled keep-alive HTTP client per `StorageClient`; clone it freely (clones share the
//! pool). A stale token comes back as [`ClientError::StaleToken`], so callers can branch on
//! "a newer holder exists" without parsing messages.
//!
//! Two protocols ([`Protocol`]): the REST face (the default), and the seed's JSON on `POST /`,
//! which both `fencelock storage` and the seed's own storage speak. The seed protocol names no
//! fence (each key is its own fence) and sends nothing the seed's storage would not decode.
//!
//! A storage behind HTTPS or a bearer token is reached through [`StorageOptions`]. Every
//! reqwest client of the crate is built by [`http_client_builder`]: reqwest is compiled
//! without a TLS provider of its own and is handed a rustls configuration with the ring
//! provider here, so nothing depends on a process-wide provider being installed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{StatusCode, Url};

use super::wire::{
    ErrorBody, FENCING_TOKEN, FenceState, KEY_NOT_FOUND, KvValue, StaleBody, TxnAnswer, TxnBody,
    TxnOutcome, TxnStep, WrongFenceBody,
};
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
        /// The lock name whose fence refused the token (the key, for a key's own fence).
        fence: String,
        /// The token the request carried.
        presented: FencingToken,
        /// The newest token the fence has seen.
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
        /// The HTTP status.
        status: StatusCode,
        /// The answer's error code (`"bad_request"`, `"not_found"`...).
        error: String,
        /// The answer's explanation.
        message: String,
    },
    /// The request did not get an answer (connection, timeout, undecodable body). The
    /// cause is the `source()`, not part of the message, so a cause chain prints it once.
    #[error("storage request failed")]
    Http(#[from] reqwest::Error),
    /// The CA bundle or the token cannot be used; the text says which and why.
    #[error("cannot set up the storage client: {0}")]
    Setup(String),
    /// The base URL, or a URL built from it and a key, cannot be parsed.
    #[error("invalid storage URL {0:?}")]
    BadUrl(String),
    /// The seed protocol names no fence; a request naming one cannot be sent with it.
    #[error(
        "the seed protocol names no fence (each key is its own fence), but fence {0:?} was given"
    )]
    FenceInSeedProtocol(String),
}

/// Which of the storage's faces a [`StorageClient`] speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Protocol {
    /// `GET`/`PUT /v1/kv/{key}` with the `Fencing-Token` header and `?fence=`.
    #[default]
    Rest,
    /// The seed's `POST /` with `{"op","key","val","version"}`, no fence field: what the seed's
    /// own storage understands. Each key is its own fence.
    Seed,
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

/// How to reach a storage that serves HTTPS or asks for a bearer token.
#[derive(Clone, Default)]
pub struct StorageOptions {
    /// PEM certificates of the authorities that sign the storage's certificate; `https://`
    /// URLs are checked against the system's roots when `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// Sent as `Authorization: Bearer <token>` with every request.
    pub bearer_token: Option<String>,
}

impl std::fmt::Debug for StorageOptions {
    // The token stays out of logs and panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageOptions")
            .field("ca", &self.ca_pem.is_some())
            .field("bearer_token", &self.bearer_token.is_some())
            .finish()
    }
}

impl StorageOptions {
    /// Reads the CA bundle (PEM) and the token (the file's first line, surrounding
    /// whitespace removed; the same file `fencelock storage --auth-token-file` reads).
    pub fn from_files(ca: Option<&Path>, token: Option<&Path>) -> Result<Self, ClientError> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                ClientError::Setup(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        let bearer_token = match token {
            Some(path) => {
                let bytes = read("token file", path)?;
                Some(parse_token(&bytes).map_err(|why| {
                    ClientError::Setup(format!("the token file {}: {why}", path.display()))
                })?)
            }
            None => None,
        };
        Ok(StorageOptions {
            ca_pem: ca.map(|ca| read("CA bundle", ca)).transpose()?,
            bearer_token,
        })
    }
}

/// A bearer token from a token file's contents: its first line, trimmed; it must be
/// non-empty visible ASCII, the characters an HTTP header carries unchanged.
pub fn parse_token(bytes: &[u8]) -> Result<String, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8")?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err("no token on its first line");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be visible ASCII without spaces");
    }
    Ok(token.to_owned())
}

/// A reqwest client builder with fencelock's TLS (rustls and ring; the CA of `options`, or
/// the system's roots) and `options`' bearer token on every request. Build every reqwest
/// client through this: reqwest's own default TLS needs a process-wide provider.
pub fn http_client_builder(
    options: &StorageOptions,
) -> Result<reqwest::ClientBuilder, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Setup(format!("TLS versions: {e}")))?;
    let mut tls = match &options.ca_pem {
        Some(pem) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| ClientError::Setup(format!("the CA bundle is not PEM: {e}")))?;
                roots.add(cert).map_err(|e| {
                    ClientError::Setup(format!("a CA certificate is unusable: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(ClientError::Setup(
                    "the CA bundle holds no certificate".into(),
                ));
            }
            versions.with_root_certificates(roots)
        }
        // Checked against the system's roots, loaded at the first handshake: a client that
        // only ever speaks plain HTTP does not read them at all.
        None => versions
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SystemRoots { provider })),
    }
    .with_no_client_auth();
    // The storage speaks HTTP/1.1 only (and so does this client).
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The one builder of the crate (clippy.toml refuses the others).
    #[allow(clippy::disallowed_methods)]
    let mut builder = reqwest::Client::builder().tls_backend_preconfigured(tls);
    if let Some(token) = &options.bearer_token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ClientError::Setup("the token cannot be sent in a header".into()))?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    Ok(builder)
}

/// The system's root certificates, read once per process at the first handshake that needs
/// them. Reading and parsing them takes tens of milliseconds (far more in a debug build), which
/// a plaintext client should not pay at construction.
static SYSTEM_ROOTS: std::sync::OnceLock<Arc<rustls::RootCertStore>> = std::sync::OnceLock::new();

/// Server certificates checked against [`SYSTEM_ROOTS`] by rustls' own WebPKI verifier; only
/// the loading of the roots is deferred.
#[derive(Debug)]
struct SystemRoots {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl SystemRoots {
    fn verifier(&self) -> Result<Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        let roots = SYSTEM_ROOTS.get_or_init(|| {
            // Unreadable system certificates are skipped, as every TLS client does; a server
            // they would have vouched for then fails its handshake as unknown.
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            Arc::new(roots)
        });
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("no usable system root certificate: {e}")))
    }
}

impl rustls::client::danger::ServerCertVerifier for SystemRoots {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client of one storage server.
#[derive(Clone, Debug)]
pub struct StorageClient {
    http: reqwest::Client,
    base: Url,
    protocol: Protocol,
}

impl StorageClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with_options(base, &StorageOptions::default())
    }

    /// A client for the server at `base` (`http://` or `https://`) with a CA bundle or a
    /// bearer token.
    pub fn with_options(base: &str, options: &StorageOptions) -> Result<Self, ClientError> {
        let http = http_client_builder(options)?
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .build()?;
        Self::with_http_client(base, http)
    }

    /// A client sharing an existing `reqwest::Client` (and its connection pool); build it
    /// with [`http_client_builder`].
    pub fn with_http_client(base: &str, http: reqwest::Client) -> Result<Self, ClientError> {
        let base = Url::parse(base).map_err(|_| ClientError::BadUrl(base.to_owned()))?;
        if base.cannot_be_a_base() {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        Ok(StorageClient {
            http,
            base,
            protocol: Protocol::Rest,
        })
    }

    /// The same client speaking `protocol`.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
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
        if self.protocol == Protocol::Seed {
            return self.seed_read(key, token, fence).await;
        }
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
        if self.protocol == Protocol::Seed {
            return self.seed_write(key, value, token, fence).await;
        }
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

    /// Applies `steps` under the lock `fence` with `token`, all or none, in one durable
    /// commit (REST only): refused whole with [`ClientError::StaleToken`] when a newer holder
    /// was seen, or [`ClientError::WrongFence`] when a key belongs to another fence.
    pub async fn txn(
        &self,
        fence: &str,
        token: FencingToken,
        steps: Vec<TxnStep>,
    ) -> Result<Vec<TxnOutcome>, ClientError> {
        let url = self.url(&["v1", "txn"], Some(fence))?;
        let response = self
            .http
            .post(url)
            .header(FENCING_TOKEN, token.get())
            .json(&TxnBody { ops: steps })
            .send()
            .await?;
        let answer: TxnAnswer = check(response, token).await?.json().await?;
        Ok(answer.results)
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

    async fn seed_read(
        &self,
        key: &str,
        token: FencingToken,
        fence: Option<&str>,
    ) -> Result<Option<Stored>, ClientError> {
        let request = serde_json::json!({"op": "read", "key": key, "version": token.get()});
        match self.seed(&request, token, fence).await? {
            Ok(answer) => Ok(Some(Stored {
                value: answer.val,
                token: u64::try_from(answer.version)
                    .ok()
                    .and_then(FencingToken::new),
                fence: None,
            })),
            Err(err) if err == KEY_NOT_FOUND => Ok(None),
            Err(err) => Err(seed_refusal(err, key, token)),
        }
    }

    async fn seed_write(
        &self,
        key: &str,
        value: &str,
        token: FencingToken,
        fence: Option<&str>,
    ) -> Result<(), ClientError> {
        let request =
            serde_json::json!({"op": "write", "key": key, "val": value, "version": token.get()});
        match self.seed(&request, token, fence).await? {
            Ok(_) => Ok(()),
            Err(err) => Err(seed_refusal(err, key, token)),
        }
    }

    /// Posts one seed-protocol request: `Ok(answer)` when `err` is empty, `Err(err)` when the
    /// storage refused it in the seed's way.
    async fn seed(
        &self,
        request: &serde_json::Value,
        token: FencingToken,
        fence: Option<&str>,
    ) -> Result<Result<SeedAnswer, String>, ClientError> {
        if let Some(fence) = fence {
            return Err(ClientError::FenceInSeedProtocol(fence.to_owned()));
        }
        let response = self
            .http
            .post(self.base.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.to_string())
            .send()
            .await?;
        let response = check(response, token).await?;
        let answer: SeedAnswer = response.json().await?;
        Ok(if answer.err.is_empty() {
            Ok(answer)
        } else {
            Err(answer.err)
        })
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

/// The seed's answer, `{"val","version","err"}`, read the way the seed's client reads it.
#[derive(serde::Deserialize)]
struct SeedAnswer {
    #[serde(default)]
    val: String,
    #[serde(default)]
    version: i64,
    #[serde(default)]
    err: String,
}

/// A seed-protocol refusal as a [`ClientError`]: a stale token when the words say so (the
/// seed's "given version (X) ... existing version (Y)", in hex, or fencelock's "presented X,
/// current Y"), otherwise the words themselves.
fn seed_refusal(err: String, key: &str, presented: FencingToken) -> ClientError {
    let between = |text: &str, open: &str, close: &str| -> Option<String> {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(text[start..end].to_owned())
    };
    let current = between(&err, "existing version (", ")")
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .or_else(|| {
            let tail = err.rsplit("current ").next()?;
            let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
            (err.contains("stale fencing token"))
                .then_some(digits)?
                .parse()
                .ok()
        })
        .and_then(FencingToken::new);
    match current {
        Some(current) => ClientError::StaleToken {
            fence: between(&err, "fence \"", "\"").unwrap_or_else(|| key.to_owned()),
            presented,
            current,
        },
        None => ClientError::Server {
            status: StatusCode::OK,
            error: "refused".into(),
            message: err,
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u64) -> FencingToken {
        FencingToken::new(n).unwrap()
    }

    #[test]
    fn seed_refusals_in_the_seeds_words_and_in_fencelocks_are_stale_tokens() {
        let seeds = "given version (a) is different from the existing version (1f)".to_owned();
        match seed_refusal(seeds, "key0", t(10)) {
            ClientError::StaleToken {
                fence,
                presented,
                current,
            } => assert_eq!((fence.as_str(), presented, current), ("key0", t(10), t(31))),
            other => panic!("{other:?}"),
        }
        let ours = "stale fencing token for fence \"key0\": presented 4, current 5".to_owned();
        assert!(matches!(
            seed_refusal(ours, "key0", t(4)),
            ClientError::StaleToken { current, .. } if current == t(5)
        ));
        let other = "a write must carry a fencing token (fence \"key0\")".to_owned();
        assert!(matches!(
            seed_refusal(other, "key0", t(4)),
            ClientError::Server { .. }
        ));
    }
}
