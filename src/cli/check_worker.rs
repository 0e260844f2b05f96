//! `fencelock check-worker` (hidden): one worker process of `fencelock check`, started by
//! the checker with the arguments it builds.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{duration, exit, stop_requested};
use crate::check::history::{Resource, Workload};
use crate::check::worker::{self, WorkerOptions};

#[derive(Args)]
pub struct CheckWorkerArgs {
    #[arg(long)]
    id: u32,
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long, value_name = "RESOURCE", default_value = "storage")]
    resource: Resource,
    #[arg(long)]
    storage: Option<String>,
    #[arg(long)]
    database_url: Option<String>,
    /// Leave the adapter's fence out (postgres and etcd).
    #[arg(long)]
    unfenced: bool,
    #[arg(long)]
    lock: String,
    #[arg(long, value_name = "WORKLOAD", default_value = "set")]
    workload: Workload,
    #[arg(long)]
    key: String,
    #[arg(long, value_name = "DURATION", value_parser = duration::parse_ttl)]
    ttl: Duration,
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    work_min: Duration,
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    work_max: Duration,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    history: PathBuf,
}

/// TLS and credentials from etcdctl's variables, which the checker sets (`--key` here is
/// the data key, so etcdctl's flags cannot be used).
fn connect_from_env() -> anyhow::Result<fencelock::lock::ConnectOptions> {
    let path = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let text = |name: &str| std::env::var(name).ok();
    super::EtcdConnect {
        cacert: path("ETCDCTL_CACERT"),
        cert: path("ETCDCTL_CERT"),
        key: path("ETCDCTL_KEY"),
        server_name: None,
        user: text("ETCDCTL_USER"),
        password: text("ETCDCTL_PASSWORD"),
    }
    .connect_options()
}

pub async fn run(args: CheckWorkerArgs) -> anyhow::Result<u8> {
    let options = WorkerOptions {
        id: args.id,
        endpoints: args.endpoints,
        resource: args.resource,
        storage: args.storage,
        database_url: args.database_url,
        fenced: !args.unfenced,
        lock: args.lock,
        workload: args.workload,
        key: args.key,
        ttl: args.ttl,
        work: (args.work_min, args.work_max),
        seed: args.seed,
        history: args.history,
        connect: connect_from_env()?,
    };
    worker::run(&options, std::io::stdout(), stop_requested())
        .await
        .with_context(|| format!("worker {} failed", options.id))?;
    Ok(exit::SUCCESS)
}
