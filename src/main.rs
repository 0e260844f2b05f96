//! The `fencelock` command: argument parsing and start-up only; the work lives in the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fencelock::storage::{self, DEFAULT_MAX_BODY, Engine, Policy};
use tracing::info;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "fencelock",
    version,
    about = "Fenced distributed locking on etcd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fenced storage server (the seed's JSON protocol on `POST /`, plus a REST face).
    Storage(StorageArgs),
}

#[derive(clap::Args)]
struct StorageArgs {
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
    /// Which requests are checked against the fence: strict (reads and writes), writes, seed
    /// (the seed's equality check) or off.
    #[arg(long, value_name = "POLICY", default_value = "strict")]
    fencing: Policy,
    /// Largest request body accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY)]
    max_body: usize,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Storage(args) => run_storage(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_storage(args: StorageArgs) -> anyhow::Result<()> {
    let engine = if args.in_memory {
        Engine::Memory
    } else {
        Engine::Durable(args.data_dir.clone())
    };
    let config = storage::Config {
        engine: engine.clone(),
        policy: args.fencing,
        max_body: args.max_body,
    };
    // One async worker per core (tokio's default). Measured on 2 cores with wrk sharing them:
    // a single worker cuts throughput by a third, since parsing and answering HTTP, not the
    // disk, is what runs out first; the writer thread sleeps in fdatasync most of the time.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener
            .local_addr()
            .context("cannot read the listening address")?;
        let server = storage::Server::open(config)
            .await
            .with_context(|| format!("cannot open the store ({engine})"))?;
        info!(%addr, policy = %args.fencing, %engine, max_body = args.max_body, "storage ready");
        // Tools that start the server on port 0 read this line to learn the real address.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}").context("cannot write to stdout")?;
        stdout.flush().context("cannot write to stdout")?;
        drop(stdout);
        server
            .serve(listener, shutdown_signal())
            .await
            .context("storage server failed")
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            // Without a SIGTERM handler the default action still ends the process.
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received, shutting down"),
        () = terminate => info!("SIGTERM received, shutting down"),
    }
}
