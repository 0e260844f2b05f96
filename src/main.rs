//! The `fencelock` command: parse the command line, set up logging and the runtime, and hand
//! over to the command (`cli/`); the work lives in the library and the tools' modules.
//!
//! Invariants: the tracing subscriber is set up here only; this is the one place that prints
//! a command's error and turns it into an exit status (`cli::exit`).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

mod bench;
mod check;
mod cli;
mod demo;
mod svg;

use cli::{Cli, Command, exit};

/// mimalloc, for the storage's commits: measured against the system allocator with `fencelock
/// bench storage` (README, "The allocator"), it raises durable transactions by about a fifth
/// and loses nothing elsewhere, once transparent huge pages are off (`main`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No transparent huge pages in this process (nor, as prctl settings are inherited, in
    // what it starts): mimalloc's segments are 2 MiB-aligned, so with THP on a store that
    // grows faults them in as huge pages, and zeroing those took half the CPU of in-memory
    // writes to new keys. A kernel without the setting just keeps its default.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    let default_level = cli.command.default_log_level();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(format!("warn,fencelock={default_level}"))),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the error, then each cause after a colon.
            eprintln!("fencelock: {e:#}");
            ExitCode::from(exit::for_error(&e))
        }
    }
}

fn run(command: Command) -> anyhow::Result<u8> {
    // One async worker per core (tokio's default). Measured for the storage on 2 cores with
    // wrk sharing them: a single worker cuts throughput by a third, since parsing and
    // answering HTTP, not the disk, is what runs out first.
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = command.run(&runtime);
    // Reading stdin occupies a blocking thread that no one can interrupt; waiting for it
    // would keep the process alive after its work is done.
    runtime.shutdown_background();
    result
}
