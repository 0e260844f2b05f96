//! `fencelock storage`: the fenced storage server on a port of its own until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use fencelock::storage::{self, Engine, Limits, Policy, limits};
use tracing::info;

use super::{
    Endpoints, announce, announce_tls, exit, listen, parse_bytes, read_pem, shutdown_signal,
};

#[derive(Args)]
pub struct StorageArgs {
    /// Address to listen on; port 0 picks a free port. The address is printed on stdout as
    /// `listening on http://IP:PORT` once the server is ready.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Directory of the durable store, created when missing.
    #[arg(long, value_name = "DIR", default_value = "fencelock-storage.data")]
    data_dir: PathBuf,
    /// Keep everything in memory instead: nothing survives the process.
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// Memory the durable store may use to cache its blocks (filled as it reads, not
    /// reserved). Reads over many keys stay fast only while their index and filter blocks
    /// fit: the default was measured over ten million keys. At least 1MiB.
    #[arg(long, value_name = "BYTES", default_value = "256MiB", value_parser = parse_cache_size, conflicts_with = "in_memory")]
    cache_size: u64,
    /// Which requests are checked against the fence.
    #[arg(long, value_name = "POLICY", default_value = "strict")]
    fencing: Policy,
    /// Largest request body accepted, in bytes; a larger one is answered 413.
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_BODY)]
    max_body: usize,
    /// Bytes of request bodies held at once, being read or waiting for their commit; a
    /// request past it is answered 503 busy. At least --max-body.
    #[arg(long, value_name = "BYTES", default_value_t = limits::DEFAULT_MAX_QUEUED_BYTES)]
    max_queued_bytes: usize,
    /// Connections open at once; one more is answered 503 busy and closed.
    #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Verify every checked token with the lock service at --endpoints: refuse a token that
    /// was never the create_revision of a lock key under the request's lock name
    /// (unknown_token), whose lock key is gone (holder_gone) or still waits (not_holder).
    /// Fenced requests must then name their lock (?fence=NAME).
    #[arg(long)]
    verify_tokens: bool,
    /// The lock service that tokens are verified with (only with --verify-tokens).
    #[command(flatten)]
    lock_service: Endpoints,
    /// Serve HTTPS (both faces, every route) with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// Require `Authorization: Bearer <token>` on every request, the token being this file's
    /// first line; others are answered 401.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// Let /healthz and /metrics answer without the token (for probes and scrapers).
    #[arg(long, requires = "auth_token_file")]
    open_health: bool,
}

/// `--cache-size`: a size from 1MiB up.
fn parse_cache_size(text: &str) -> Result<u64, String> {
    let bytes = parse_bytes(text)?;
    if bytes < 1 << 20 {
        return Err(format!("{text:?} is below the smallest block cache, 1MiB"));
    }
    u64::try_from(bytes).map_err(|_| format!("{text:?} is too large"))
}

pub async fn run(args: StorageArgs) -> anyhow::Result<u8> {
    let engine = if args.in_memory {
        Engine::Memory
    } else {
        Engine::Durable {
            dir: args.data_dir.clone(),
            cache_bytes: args.cache_size,
        }
    };
    let config = storage::Config {
        engine: engine.clone(),
        policy: args.fencing,
        limits: Limits {
            max_body: args.max_body,
            max_queued_bytes: args.max_queued_bytes,
            max_connections: args.max_connections,
        },
        tls: match (&args.cert_file, &args.key_file) {
            (Some(cert), Some(key)) => Some(storage::TlsConfig {
                cert_pem: read_pem("--cert-file", cert)?,
                key_pem: read_pem("--key-file", key)?,
            }),
            _ => None,
        },
        auth: match &args.auth_token_file {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read --auth-token-file {}", path.display()))?;
                let token = storage::client::parse_token(&bytes).map_err(|why| {
                    anyhow::anyhow!("--auth-token-file {}: {why}", path.display())
                })?;
                Some(storage::AuthConfig {
                    token,
                    open_health: args.open_health,
                })
            }
            None => None,
        },
    };
    let (listener, addr) = listen(&args.listen).await?;
    let mut server = storage::Server::open(config)
        .await
        .with_context(|| format!("cannot start the storage ({engine})"))?;
    if args.verify_tokens {
        let endpoints = &args.lock_service.endpoints;
        let options = args.lock_service.tls.connect_options()?;
        let client = fencelock::lock::Client::connect_with(endpoints, &options)
            .await
            .context("--verify-tokens: cannot reach the lock service")?;
        server = server.verify_tokens(storage::verify::Verifier::new(client));
        info!(endpoints = %endpoints.join(","), "tokens are verified with the lock service");
    }
    info!(%addr, policy = %args.fencing, %engine, max_body = args.max_body,
          tls = server.is_tls(), bearer_token = args.auth_token_file.is_some(), "storage ready");
    if server.is_tls() {
        announce_tls(addr)?;
    } else {
        announce(addr)?;
    }
    server
        .serve(listener, shutdown_signal())
        .await
        .context("storage server failed")?;
    Ok(exit::SUCCESS)
}
