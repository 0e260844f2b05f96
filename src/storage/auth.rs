//! The storage's bearer token (`--auth-token-file`): every request must carry
//! `Authorization: Bearer <token>`, or is answered 401 with the usual JSON error body before
//! its body is read. `/healthz` and `/metrics` need it too, unless the operator opens them
//! (`--open-health`) for probes and scrapers that carry no secret.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::debug;

use super::http::error_response;

/// Who may use the storage.
#[derive(Clone)]
pub struct AuthConfig {
    /// The token requests must present.
    pub token: String,
    /// `/healthz` and `/metrics` answer without the token.
    pub open_health: bool,
}

impl std::fmt::Debug for AuthConfig {
    // The token stays out of logs and panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("open_health", &self.open_health)
            .finish_non_exhaustive()
    }
}

/// The routes `open_health` leaves open.
const HEALTH_PATHS: [&str; 2] = ["/healthz", "/metrics"];

pub(super) async fn require_token(
    State(auth): State<Arc<AuthConfig>>,
    request: Request,
    next: Next,
) -> Response {
    if auth.open_health && HEALTH_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match presented(request.headers().get(header::AUTHORIZATION)) {
        Some(token) if same(token, auth.token.as_bytes()) => next.run(request).await,
        presented => {
            let message = if presented.is_some() {
                "the bearer token is not the storage's"
            } else {
                "this storage needs `Authorization: Bearer <token>`"
            };
            debug!(path = request.uri().path(), "refused: {message}");
            let mut response =
                error_response(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned());
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case, as HTTP
/// allows).
fn presented(value: Option<&HeaderValue>) -> Option<&[u8]> {
    let value = value?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// Equality whose time does not depend on where the first difference is, so that the answer
/// time does not tell how much of a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_is_read_in_any_case_of_the_scheme() {
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(presented(Some(&value("Bearer abc"))), Some(&b"abc"[..]));
        assert_eq!(presented(Some(&value("bearer abc"))), Some(&b"abc"[..]));
        assert_eq!(presented(Some(&value("Basic abc"))), None);
        assert_eq!(presented(Some(&value("Bearer"))), None);
        assert_eq!(presented(None), None);
    }

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
