//! Wire types: the seed's JSON protocol on `POST /` and the JSON bodies of the REST face.
//!
//! The seed protocol is decoded the way Go's `encoding/json` decodes the seed's structs, so
//! the seed's own client works unchanged: unknown fields are ignored, missing fields (and
//! `null`) are zero values. Anything Go would refuse, and a few things it would let through
//! silently (a `version` outside int64, duplicate fields, lone surrogates), is a
//! [`DecodeError`] answered with a 4xx. `version` carries the fencing token, 0 meaning none.

use serde::{Deserialize, Serialize};

use crate::FencingToken;
use crate::token::MAX_TOKEN;

/// The HTTP header that carries the fencing token on the REST face.
pub const FENCING_TOKEN: &str = "fencing-token";

/// Fjall limits keys to 64 KiB; fence names and keys are stored as keys.
pub const MAX_KEY_BYTES: usize = u16::MAX as usize;

/// The seed protocol's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedOp {
    /// `"read"`: answer the key's value and token.
    Read,
    /// `"write"`: store a value under the presented token.
    Write,
}

/// `{"op","key","val","version"}` plus the optional `"fence"`, as it arrives.
#[derive(Debug, Deserialize)]
struct RawSeedRequest {
    #[serde(default)]
    op: Option<SeedOp>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    val: Option<String>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    fence: Option<String>,
}

/// A decoded, validated seed-protocol request.
#[derive(Debug, PartialEq, Eq)]
pub struct SeedRequest {
    /// What the request does.
    pub op: SeedOp,
    /// The key it reads or writes.
    pub key: String,
    /// The value to write; empty for a read.
    pub val: String,
    /// `None` for the wire's 0.
    pub token: Option<FencingToken>,
    /// The lock name guarding the key; `None` when the key is its own fence.
    pub fence: Option<String>,
}

/// Why a request body or parameter could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is empty.
    #[error("empty request body")]
    EmptyBody,
    /// The body is not the expected JSON; the parser's explanation, as text.
    #[error("invalid JSON request: {0}")]
    Json(String),
    /// A seed request without `"op"`.
    #[error("missing \"op\" (expected \"read\" or \"write\")")]
    MissingOp,
    /// A `"version"` above the largest fencing token.
    #[error("\"version\" must be at most {MAX_TOKEN}, got {0}")]
    TokenOutOfRange(u64),
    /// The named field (`"key"`, `"ops"`...) is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A key or name longer than the store keeps.
    #[error("{what} is {len} bytes long, the limit is {MAX_KEY_BYTES}")]
    TooLong {
        /// Which field is too long.
        what: &'static str,
        /// Its length, in bytes.
        len: usize,
    },
    /// The `Fencing-Token` header is not a fencing token; why, as text.
    #[error("invalid Fencing-Token header: {0}")]
    BadTokenHeader(String),
    /// A REST value that is not UTF-8.
    #[error("the value must be UTF-8 text")]
    ValueNotUtf8,
    /// A transaction with more steps than allowed; how many it has.
    #[error("a transaction holds at most {MAX_TXN_OPS} steps, this one {0}")]
    TooManyOps(usize),
    /// A transaction without `?fence=`.
    #[error("a transaction names its lock: ?fence=NAME")]
    TxnWithoutFence,
}

impl SeedRequest {
    /// Decodes one request body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(DecodeError::EmptyBody);
        }
        let raw: RawSeedRequest =
            serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
        let op = raw.op.ok_or(DecodeError::MissingOp)?;
        let version = raw.version.unwrap_or(0);
        if version > MAX_TOKEN {
            return Err(DecodeError::TokenOutOfRange(version));
        }
        let key = raw.key.unwrap_or_default();
        check_name("the key", &key)?;
        // Go's zero value for a missing fence is "", which means "no fence" here too.
        let fence = raw.fence.filter(|f| !f.is_empty());
        if let Some(fence) = &fence {
            check_name("the fence name", fence)?;
        }
        Ok(SeedRequest {
            op,
            key,
            val: raw.val.unwrap_or_default(),
            token: FencingToken::new(version),
            fence,
        })
    }
}

/// Checks a key or fence name: not empty, and short enough to be stored as a key.
pub fn check_name(what: &'static str, name: &str) -> Result<(), DecodeError> {
    if name.is_empty() {
        return Err(DecodeError::Empty(what));
    }
    if name.len() > MAX_KEY_BYTES {
        return Err(DecodeError::TooLong {
            what,
            len: name.len(),
        });
    }
    Ok(())
}

/// The `Fencing-Token` header of the REST face: absent is `None`, present must be a token.
pub fn parse_token_header(
    value: Option<&http::HeaderValue>,
) -> Result<Option<FencingToken>, DecodeError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| DecodeError::BadTokenHeader("not ASCII".into()))?;
    text.parse::<FencingToken>()
        .map(Some)
        .map_err(DecodeError::BadTokenHeader)
}

/// `{"val","version","err"}`: the seed's answer. `err` is empty on success; on an error
/// `version` is -1 and `val` empty, as the seed answers.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeedResponse<'a> {
    /// The value read; empty for a write or an error.
    pub val: &'a str,
    /// The token, as [`wire_version`] writes it; -1 on an error.
    pub version: i64,
    /// The error text; empty on success.
    pub err: &'a str,
}

impl<'a> SeedResponse<'a> {
    /// A success answering `val` and `token`.
    pub fn ok(val: &'a str, token: Option<FencingToken>) -> Self {
        SeedResponse {
            val,
            version: wire_version(token),
            err: "",
        }
    }

    /// An error answering `err`.
    pub fn error(err: &'a str) -> Self {
        SeedResponse {
            val: "",
            version: -1,
            err,
        }
    }
}

/// A token as the seed's int64 `version`: 0 for none. Tokens never exceed `i64::MAX`.
pub fn wire_version(token: Option<FencingToken>) -> i64 {
    token.map_or(0, |t| i64::try_from(t.get()).unwrap_or(i64::MAX))
}

/// The text the seed answers for a read of a missing key.
pub const KEY_NOT_FOUND: &str = "key not found";

/// REST: `GET /v1/kv/{key}` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvValue {
    /// The key read.
    pub key: String,
    /// Its value.
    pub value: String,
    /// The token of the write that stored the value (`null` if it carried none).
    pub token: Option<FencingToken>,
    /// The lock name whose fence guards the key; `null` when the key is its own fence or no
    /// checked access has bound it yet.
    #[serde(default)]
    pub fence: Option<String>,
    /// True when the key is bound to its own fence (its first checked access named none).
    #[serde(default)]
    pub own_fence: bool,
    /// The current token of the key's fence (a lock's or its own); `null` while unbound.
    #[serde(default)]
    pub fence_token: Option<FencingToken>,
}

/// REST: `PUT /v1/kv/{key}` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvWritten {
    /// The key written.
    pub key: String,
    /// The token the write carried (`null` if none).
    pub token: Option<FencingToken>,
}

/// REST: `GET /v1/fences/{name}` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FenceState {
    /// The lock name.
    pub fence: String,
    /// The newest token its fence has seen.
    pub token: FencingToken,
}

/// REST: the 409 body for a stale token.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StaleBody {
    /// Always `"stale_token"`.
    pub error: String,
    /// The fence that refused the token.
    pub fence: String,
    /// The presented token; `null` only under the seed policy for a write without one.
    pub presented: Option<FencingToken>,
    /// The newest token the fence has seen.
    pub current: FencingToken,
}

/// REST: the 409 body for a token that token verification refused: `error` is
/// `unknown_token` (never handed out for the lock), `holder_gone` (its lock key is gone) or
/// `not_holder` (a waiter's key).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnverifiedBody {
    /// `unknown_token`, `holder_gone` or `not_holder`.
    pub error: String,
    /// What happened, in words.
    pub message: String,
    /// The lock name.
    pub fence: String,
    /// The presented token.
    pub token: FencingToken,
}

/// REST: the 409 body for a request naming another fence than the key's.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrongFenceBody {
    /// Always `"wrong_fence"`.
    pub error: String,
    /// The refusal in words.
    pub message: String,
    /// The key of the request.
    pub key: String,
    /// The lock name the key belongs to; `null` for the key's own fence.
    pub fence: Option<String>,
    /// The lock name the request named; `null` when it named none (the key's own fence).
    pub requested: Option<String>,
}

/// Most steps one transaction may hold: far more than one lock's keys usually need, few
/// enough that one transaction cannot hold the store's lock for long.
pub const MAX_TXN_OPS: usize = 1024;

/// REST: `POST /v1/txn?fence=NAME` body, `{"ops":[{"op":"write","key":"a","val":"1"}, ...]}`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TxnBody {
    /// The steps, applied in order, all or none.
    pub ops: Vec<TxnStep>,
}

/// One step of a transaction as it travels.
///
/// Decoded in one pass through a plain struct of its fields: serde decodes an internally
/// tagged enum by first copying each step's whole map into a buffer of its own and then
/// decoding that, which cost a few percent of the storage's CPU per 16-key transaction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase", try_from = "RawTxnStep")]
pub enum TxnStep {
    /// Read `key`.
    Read {
        /// The key.
        key: String,
    },
    /// Store `val` under `key`.
    Write {
        /// The key.
        key: String,
        /// The value.
        val: String,
    },
    /// Remove the value under `key`.
    Delete {
        /// The key.
        key: String,
    },
}

/// What a step's `op` names.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TxnStepOp {
    Read,
    Write,
    Delete,
}

/// A step as it arrives: a JSON object (never an array) in which `val` is required of
/// writes only and ignored elsewhere, as are fields the step does not know.
#[derive(Debug)]
struct RawTxnStep {
    op: TxnStepOp,
    key: String,
    val: Option<String>,
}

/// The fields of a [`RawTxnStep`].
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum TxnStepField {
    Op,
    Key,
    Val,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for RawTxnStep {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawTxnStepVisitor)
    }
}

struct RawTxnStepVisitor;

impl<'de> serde::de::Visitor<'de> for RawTxnStepVisitor {
    type Value = RawTxnStep;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(r#"a step such as {"op":"write","key":"a","val":"1"}"#)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawTxnStep, A::Error> {
        use serde::de::Error;
        fn once<'de, T: Deserialize<'de>, A: serde::de::MapAccess<'de>>(
            map: &mut A,
            slot: &mut Option<T>,
            name: &'static str,
        ) -> Result<(), A::Error> {
            match slot {
                Some(_) => Err(A::Error::duplicate_field(name)),
                None => {
                    *slot = Some(map.next_value()?);
                    Ok(())
                }
            }
        }
        // `val` may be null, which is no value: a null one still counts as given once.
        let (mut op, mut key, mut val) = (None, None, None::<Option<String>>);
        while let Some(field) = map.next_key()? {
            match field {
                TxnStepField::Op => once(&mut map, &mut op, "op")?,
                TxnStepField::Key => once(&mut map, &mut key, "key")?,
                TxnStepField::Val => once(&mut map, &mut val, "val")?,
                TxnStepField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(RawTxnStep {
            op: op.ok_or_else(|| A::Error::missing_field("op"))?,
            key: key.ok_or_else(|| A::Error::missing_field("key"))?,
            val: val.flatten(),
        })
    }
}

impl TryFrom<RawTxnStep> for TxnStep {
    type Error = &'static str;

    fn try_from(raw: RawTxnStep) -> Result<Self, Self::Error> {
        let RawTxnStep { op, key, val } = raw;
        Ok(match op {
            TxnStepOp::Read => TxnStep::Read { key },
            TxnStepOp::Write => TxnStep::Write {
                key,
                val: val.ok_or("missing field `val`")?,
            },
            TxnStepOp::Delete => TxnStep::Delete { key },
        })
    }
}

impl TxnBody {
    /// Decodes and validates a transaction body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(DecodeError::EmptyBody);
        }
        let txn: TxnBody =
            serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
        if txn.ops.is_empty() {
            return Err(DecodeError::Empty("\"ops\""));
        }
        if txn.ops.len() > MAX_TXN_OPS {
            return Err(DecodeError::TooManyOps(txn.ops.len()));
        }
        for step in &txn.ops {
            check_name("the key", step.key())?;
        }
        Ok(txn)
    }
}

impl TxnStep {
    /// The key this step touches.
    pub fn key(&self) -> &str {
        match self {
            TxnStep::Read { key } | TxnStep::Write { key, .. } | TxnStep::Delete { key } => key,
        }
    }
}

/// REST: the answer to a transaction, `{"token":N,"results":[...]}`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TxnAnswer {
    /// The token the transaction carried.
    pub token: Option<FencingToken>,
    /// One result per step, in order.
    pub results: Vec<TxnOutcome>,
}

/// What one step of a transaction saw or did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum TxnOutcome {
    /// The value read (`null` when the key held none) and the token that wrote it.
    Read {
        /// The key.
        key: String,
        /// The value, `null` when missing.
        value: Option<String>,
        /// The token of the write that stored it.
        token: Option<FencingToken>,
    },
    /// The value was stored.
    Write {
        /// The key.
        key: String,
    },
    /// The value was removed.
    Delete {
        /// The key.
        key: String,
        /// Whether the key held a value.
        deleted: bool,
    },
}

/// REST and routing errors: `{"error": code, "message": text}`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// A short code callers can branch on (`"bad_request"`, `"not_found"`...).
    pub error: String,
    /// A sentence for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<SeedRequest, DecodeError> {
        SeedRequest::decode(s.as_bytes())
    }

    #[test]
    fn decodes_what_the_seeds_go_client_sends() {
        let req =
            decode(r#"{"op":"write","key":"key0","val":"value","version":9223372036854775807}"#)
                .unwrap();
        assert_eq!(req.op, SeedOp::Write);
        assert_eq!(req.key, "key0");
        assert_eq!(req.val, "value");
        assert_eq!(req.token.map(FencingToken::get), Some(MAX_TOKEN));
        assert_eq!(req.fence, None);
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_are_zero() {
        let req = decode(r#"{"op":"read","key":"k","extra":[1,{"a":null}]}"#).unwrap();
        assert_eq!((req.val.as_str(), req.token), ("", None));
        let req = decode(r#"{"op":"read","key":"k","version":null,"fence":""}"#).unwrap();
        assert_eq!((req.token, req.fence), (None, None));
    }

    #[test]
    fn bad_bodies_are_refused() {
        for body in [
            "",
            "  \n",
            "{",
            "[]",
            "null",
            r#"{"op":"read","key":"k"} trailing"#,
            r#"{"op":"read","key":"k"}{}"#,
            r#"{"op":"delete","key":"k"}"#,
            r#"{"key":"k"}"#,
            r#"{"op":5,"key":"k"}"#,
            r#"{"op":"read","key":7}"#,
            r#"{"op":"read","key":"k","version":"5"}"#,
            r#"{"op":"read","key":"k","version":-1}"#,
            r#"{"op":"read","key":"k","version":1.5}"#,
            r#"{"op":"read","key":"k","version":1e3}"#,
            r#"{"op":"read","key":"k","version":9223372036854775808}"#,
            r#"{"op":"read","key":"k","version":18446744073709551616}"#,
            r#"{"op":"read","key":"k","key":"j"}"#,
            r#"{"op":"read","key":"\ud800"}"#,
            r#"{"op":"read","key":""}"#,
            r#"{"op":"read"}"#,
        ] {
            assert!(decode(body).is_err(), "accepted {body:?}");
        }
        let mut invalid_utf8 = br#"{"op":"read","key":"k"#.to_vec();
        invalid_utf8.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
        assert!(SeedRequest::decode(&invalid_utf8).is_err());
    }

    #[test]
    fn transaction_steps_decode_in_any_field_order_and_travel_back_as_they_came() {
        let body = r#"{"ops":[{"key":"a","val":"1","op":"write"},{"op":"read","key":"b","val":"x"},
            {"op":"delete","extra":[1,{"a":null}],"key":"c"}]}"#;
        let txn = TxnBody::decode(body.as_bytes()).unwrap();
        let expected = vec![
            TxnStep::Write {
                key: "a".into(),
                val: "1".into(),
            },
            TxnStep::Read { key: "b".into() },
            TxnStep::Delete { key: "c".into() },
        ];
        assert_eq!(txn.ops, expected);
        let sent = serde_json::to_string(&txn).unwrap();
        assert_eq!(
            sent,
            r#"{"ops":[{"op":"write","key":"a","val":"1"},{"op":"read","key":"b"},{"op":"delete","key":"c"}]}"#
        );
        assert_eq!(TxnBody::decode(sent.as_bytes()).unwrap(), txn);
    }

    #[test]
    fn bad_transaction_steps_are_refused_with_what_is_wrong() {
        for (step, says) in [
            (r#"{"op":"write","key":"a"}"#, "missing field `val`"),
            (
                r#"{"op":"write","key":"a","val":null}"#,
                "missing field `val`",
            ),
            (r#"{"key":"a"}"#, "missing field `op`"),
            (r#"{"op":"read"}"#, "missing field `key`"),
            (r#"{"op":"drop","key":"a"}"#, "unknown variant `drop`"),
            (
                r#"{"op":"read","key":"a","key":"b"}"#,
                "duplicate field `key`",
            ),
            (
                r#"{"op":"write","key":"a","val":null,"val":"1"}"#,
                "duplicate field `val`",
            ),
            (r#"{"op":null,"key":"a"}"#, "expected value"),
            (r#"{"op":"read","key":7}"#, "invalid type: integer `7`"),
            (
                r#"{"op":"write","key":"a","val":1}"#,
                "invalid type: integer `1`",
            ),
            (r#"["read","a"]"#, "invalid type: sequence"),
            (r#"{"op":"read","key":""}"#, "empty"),
        ] {
            let body = format!(r#"{{"ops":[{step}]}}"#);
            let error = TxnBody::decode(body.as_bytes()).unwrap_err().to_string();
            assert!(error.contains(says), "{step}: {error}");
        }
    }

    #[test]
    fn error_answers_carry_version_minus_one() {
        let body = serde_json::to_string(&SeedResponse::error(KEY_NOT_FOUND)).unwrap();
        assert_eq!(body, r#"{"val":"","version":-1,"err":"key not found"}"#);
    }
}
