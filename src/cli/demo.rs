//! `fencelock demo`: the expired-lease scenario, automated, with fencing and without.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{EtcdConnect, current_exe, duration, exit, unless_interrupted};
use crate::demo::resource::Resource;
use crate::demo::{self, DemoOptions};

#[derive(Args)]
pub struct DemoArgs {
    /// Use this etcd cluster (comma-separated endpoints) instead of an embedded lockd.
    #[arg(long, value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// Lease TTL the clients ask for. Whole seconds: 2s, 1m or seconds.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration::parse_ttl)]
    ttl: Duration,
    /// Directory for the timeline picture, demo-timeline.svg.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Print only a machine-readable JSON result.
    #[arg(long)]
    json: bool,
    /// TLS and credentials towards the cluster given with --endpoints.
    #[command(flatten)]
    tls: EtcdConnect,
    /// Where the clients write: fencelock's storage, a PostgreSQL table (fenced
    /// transactions, then plain upserts) or the key in the lock service itself (Txns on the
    /// lock key, then plain puts).
    #[arg(long, value_enum, default_value_t = Resource::Storage)]
    resource: Resource,
    /// The database for --resource postgres; without it the demo starts a private
    /// PostgreSQL (when installed) and removes it afterwards.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<u8> {
    let options = DemoOptions {
        endpoints: args.endpoints,
        ttl: args.ttl,
        out_dir: args.out,
        json: args.json,
        client_bin: current_exe()?,
        connect: args.tls.connect_options()?,
        client_env: args.tls.as_env(),
        resource: args.resource,
        database_url: args.database_url,
    };
    // Interrupted, the demo is dropped, which kills its clients and stops its servers.
    let report = unless_interrupted(demo::run(&options, &mut std::io::stdout())).await?;
    Ok(if report.fencing_rejected_stale_write {
        exit::SUCCESS
    } else {
        exit::UNSAFE
    })
}
