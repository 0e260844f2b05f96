//! `fencelock client 1|2`: the seed's client, acquire the lock and write with its token.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use fencelock::storage::{Protocol, StorageOptions};

use super::{duration, exit};
use crate::demo::client::{self, ClientOptions, Outcome, Role};
use crate::demo::resource::Resource;

#[derive(Args)]
pub struct ClientArgs {
    /// Which client: 1 waits (or pauses) before writing, 2 writes at once.
    #[arg(value_parser = clap::value_parser!(u8).range(1..=2))]
    client: u8,
    /// etcd endpoints, comma-separated (host:port, http://host:port or https://host:port).
    #[arg(
        long,
        env = "ETCDCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
    )]
    endpoints: Vec<String>,
    /// The fenced storage's URL (http:// or https://).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    storage: String,
    /// CA bundle (PEM) that signs an https:// storage's certificate; the system's roots
    /// otherwise.
    // Named for the storage: `--cacert`, `--cert` and `--key` are etcdctl's names for the
    // lock service, and `--key` here is the storage key.
    #[arg(long, value_name = "FILE")]
    storage_cacert: Option<PathBuf>,
    /// File whose first line is the storage's bearer token (its --auth-token-file).
    #[arg(long, value_name = "FILE")]
    storage_token_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs the lock service's certificates, as etcdctl's --cacert.
    #[arg(long, env = "ETCDCTL_CACERT", value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) for a lock service with mutual TLS; needs --cert-key.
    #[arg(long, env = "ETCDCTL_CERT", value_name = "FILE", requires = "cert_key")]
    cert: Option<PathBuf>,
    /// The client certificate's key (PEM): etcdctl's --key, renamed because --key is the
    /// storage key here; ETCDCTL_KEY works as with etcdctl.
    #[arg(long, env = "ETCDCTL_KEY", value_name = "FILE", requires = "cert")]
    cert_key: Option<PathBuf>,
    /// The name the lock service's certificates carry, when it is not the endpoint's host.
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Authenticate as this etcd user: `name:password`, or `name` with --password.
    #[arg(long, env = "ETCDCTL_USER", value_name = "NAME[:PASSWORD]")]
    user: Option<String>,
    /// The user's password, when --user gives only the name.
    #[arg(
        long,
        env = "ETCDCTL_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// The lock name; also the fence the storage checks the token against.
    #[arg(long, value_name = "NAME", default_value = "/lock")]
    lock: String,
    /// The storage key to write.
    #[arg(long, default_value = "key0")]
    key: String,
    /// How to talk to the storage: rest (fenced by the lock name), or seed, the seed's JSON on
    /// `POST /` with no fence (the key is its own fence), which the seed's own storage speaks.
    #[arg(long, value_enum, default_value_t = Protocol::Rest)]
    protocol: Protocol,
    /// Lease TTL (the lock service may grant more; the granted TTL is printed). Whole
    /// seconds: 2s, 1m or seconds.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration::parse_ttl)]
    ttl: Duration,
    /// Client 1: instead of waiting for Enter, stop all work, keepalives included, for this
    /// long, then write. 500ms, 2s, 1m or seconds.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pause: Option<Duration>,
    /// Print JSON lines (one per event) instead of plain words.
    #[arg(long)]
    json: bool,
    /// Where to write: the fenced storage (--storage), a PostgreSQL table (--database-url;
    /// fenced by `fencelock::fence::postgres`), or the key in the lock service itself (fenced
    /// by a Txn on the lock key).
    #[arg(long, value_enum, default_value_t = Resource::Storage)]
    resource: Resource,
    /// PostgreSQL's URL, for --resource postgres.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// For --resource postgres or etcd: write without the fence, to see what it prevents.
    #[arg(long)]
    unfenced: bool,
}

/// Runs on a one-thread runtime of its own, which `--pause` stops (`demo::client`).
pub fn run(args: ClientArgs) -> anyhow::Result<u8> {
    if args.pause.is_some() && args.client != 1 {
        return Err(exit::usage("--pause is for client 1"));
    }
    if args.resource == Resource::Postgres && args.database_url.is_none() {
        return Err(exit::usage(
            "--resource postgres needs --database-url (or DATABASE_URL)",
        ));
    }
    if args.unfenced && args.resource == Resource::Storage {
        return Err(exit::usage(
            "--unfenced is for --resource postgres or etcd; the storage's --fencing decides for it",
        ));
    }
    let options = ClientOptions {
        role: if args.client == 1 {
            Role::First
        } else {
            Role::Second
        },
        endpoints: args.endpoints,
        connect: super::EtcdConnect {
            cacert: args.cacert,
            cert: args.cert,
            key: args.cert_key,
            server_name: args.server_name,
            user: args.user,
            password: args.password,
        }
        .connect_options()?,
        storage: args.storage,
        storage_options: StorageOptions::from_files(
            args.storage_cacert.as_deref(),
            args.storage_token_file.as_deref(),
        )?,
        protocol: args.protocol,
        lock: args.lock,
        key: args.key,
        ttl: args.ttl,
        pause: args.pause,
        json: args.json,
        resource: args.resource,
        database_url: args.database_url,
        fenced: !args.unfenced,
    };
    let outcome = client::run(&options, &mut std::io::stdout())?;
    Ok(exit_status(outcome))
}

fn exit_status(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Accepted => exit::SUCCESS,
        Outcome::Stale => exit::STALE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_writes_exit_3_and_accepted_ones_0() {
        assert_eq!(exit_status(Outcome::Accepted), 0);
        assert_eq!(exit_status(Outcome::Stale), 3);
    }
}
