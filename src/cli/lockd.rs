//! `fencelock lockd`: the embedded lock service on a port of its own until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fencelock::lockd;
use tracing::info;

use super::{announce, announce_tls, duration, exit, listen, read_pem, shutdown_signal};

#[derive(Args)]
pub struct LockdArgs {
    /// Address to listen on; port 0 picks a free port. The address is printed on stdout as
    /// `listening on http://IP:PORT` once lockd is ready.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2379")]
    listen: String,
    /// Directory for the revision high-water mark, created when missing.
    #[arg(long, value_name = "DIR", default_value = "fencelock-lockd.data")]
    data_dir: PathBuf,
    /// Keep nothing on disk: revisions start again at 1 with every start, so tokens from an
    /// earlier run may be repeated.
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// Lease TTLs below this are raised to it. Whole seconds: 2s, 1m or seconds.
    // The default is `lockd::DEFAULT_MIN_TTL`; a test below keeps the two equal.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration::parse_ttl)]
    min_ttl: Duration,
    /// Events kept for watches and reads of past revisions (and at most 64 MiB of keys and
    /// values); older ones are compacted.
    #[arg(long, value_name = "EVENTS", default_value_t = lockd::DEFAULT_HISTORY,
          value_parser = parse_history)]
    history: usize,
    /// Largest Put, DeleteRange or Txn accepted, in bytes (etcd's default: 1.5 MiB); larger
    /// ones get etcd's "request is too large".
    #[arg(long, value_name = "BYTES", default_value_t = lockd::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Bound on the bytes of live keys and values; a write past it gets etcd's "database
    /// space exceeded", deletes still work.
    #[arg(long, value_name = "BYTES", default_value_t = lockd::DEFAULT_QUOTA_BACKEND_BYTES)]
    quota_backend_bytes: usize,
    /// Lock-delay: the keys of a lease that ended without being deleted (it expired or was
    /// revoked) stay this much longer, so a crashed or frozen holder's lock passes to the next
    /// waiter no sooner than this after its lease ended. Released locks pass at once.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration::parse)]
    lock_delay: Duration,
    /// Serve TLS on the client port with this certificate (PEM), as etcd's --cert-file.
    #[arg(long, value_name = "FILE", requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM), as etcd's --key-file.
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// Authorities (PEM) whose client certificates --client-cert-auth accepts.
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    trusted_ca_file: Option<PathBuf>,
    /// Mutual TLS: refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long, requires = "trusted_ca_file")]
    client_cert_auth: bool,
    /// Also serve /health and /metrics over plaintext HTTP on these URLs, comma-separated
    /// (`http://127.0.0.1:2381`), as etcd's --listen-metrics-urls; with TLS on the client
    /// port this is where monitoring scrapes.
    #[arg(long, value_name = "URLS", value_delimiter = ',', value_parser = parse_metrics_url)]
    listen_metrics_urls: Vec<String>,
}

/// `http://HOST:PORT` as `HOST:PORT`. Only plaintext: a metrics listener with TLS would need
/// certificates of its own, and etcd's common use is a plaintext port for the scraper.
fn parse_metrics_url(text: &str) -> Result<String, String> {
    let Some(address) = text.strip_prefix("http://") else {
        return Err(format!("{text}: only http://HOST:PORT is served"));
    };
    let address = address.trim_end_matches('/');
    if address.is_empty() || address.contains('/') {
        return Err(format!("{text}: expected http://HOST:PORT"));
    }
    Ok(address.to_owned())
}

fn parse_history(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn run(args: LockdArgs) -> anyhow::Result<u8> {
    let config = lockd::Config {
        data_dir: (!args.in_memory).then(|| args.data_dir.clone()),
        min_ttl: args.min_ttl,
        history: args.history,
        max_request_bytes: args.max_request_bytes,
        quota_backend_bytes: args.quota_backend_bytes,
        lock_delay: args.lock_delay,
        tls: tls(&args)?,
    };
    let (listener, addr) = listen(&args.listen).await?;
    let mut metrics = Vec::new();
    for url in &args.listen_metrics_urls {
        let (listener, addr) = listen(url).await?;
        info!(%addr, "serving /health and /metrics over http");
        metrics.push(listener);
    }
    let server = lockd::Server::open(&config).context("cannot start lockd")?;
    let data = match &config.data_dir {
        Some(dir) => dir.display().to_string(),
        None => "none (in memory)".into(),
    };
    info!(%addr, data_dir = %data, revision = server.revision(),
          min_ttl = args.min_ttl.as_secs(), tls = server.is_tls(),
          client_cert_auth = args.client_cert_auth, "lockd ready");
    if server.is_tls() {
        announce_tls(addr)?;
    } else {
        announce(addr)?;
    }
    server
        .serve_with_metrics(listener, metrics, shutdown_signal())
        .await
        .context("lockd failed")?;
    Ok(exit::SUCCESS)
}

fn tls(args: &LockdArgs) -> anyhow::Result<Option<lockd::TlsConfig>> {
    // clap's `requires` make the key come with the certificate.
    let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) else {
        return Ok(None);
    };
    Ok(Some(lockd::TlsConfig {
        cert_pem: read_pem("--cert-file", cert)?,
        key_pem: read_pem("--key-file", key)?,
        trusted_ca_pem: args
            .trusted_ca_file
            .as_deref()
            .map(|ca| read_pem("--trusted-ca-file", ca))
            .transpose()?,
        client_cert_auth: args.client_cert_auth,
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LockdArgs,
    }

    #[test]
    fn the_default_min_ttl_is_the_library_default() {
        let parsed = Wrapper::try_parse_from(["lockd"]).expect("defaults parse");
        assert_eq!(parsed.args.min_ttl, lockd::DEFAULT_MIN_TTL);
    }
}
