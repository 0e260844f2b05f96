//! `fencelock check`: the fault-injection checker, its arguments and its exit status.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use fencelock::storage::Policy;

use super::{current_exe, duration, exit, unless_interrupted};
use crate::check::history::{FaultKind, Resource, Workload};
use crate::check::run::{self, Backend, CheckError};
use crate::check::saved;

#[derive(Args)]
pub struct CheckArgs {
    /// How long each run lasts. 500ms, 2s, 1m or seconds.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration::parse_positive)]
    duration: Duration,
    /// Worker processes.
    #[arg(long, value_name = "N", default_value_t = 5)]
    clients: u32,
    /// Session lease TTL. Whole seconds: 2s, 1m or seconds.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration::parse_ttl)]
    ttl: Duration,
    /// The lock name the workers contend for.
    #[arg(long, value_name = "NAME", default_value = "/fencelock-check")]
    lock: String,
    /// What each cycle does under the lock: `set` adds the worker's own element to a set
    /// (every lost acknowledged add is seen exactly), `counter` increments a counter.
    /// Ignored with --analyse, which reads it from the kept run.
    #[arg(long, value_name = "WORKLOAD", default_value = "set")]
    workload: Workload,
    /// Work between a worker's read and its write: uniformly random in MIN-MAX (or 0-MAX
    /// when one bound is given), each bound 500ms, 2s, 1m or seconds. Counted from the
    /// read's answer, so time a worker spends frozen after its read is part of its work.
    #[arg(long, value_name = "MIN-MAX", default_value = "0-2", value_parser = duration::parse_range)]
    work: (Duration, Duration),
    /// Faults to inject, comma-separated: freeze-holder, freeze-after-read, revoke,
    /// freeze-lock-service, kill-storage, kill-member, kill-postgres, isolate-holder,
    /// clock-skew; or none. Each time one is drawn at random from the list, so a fault named
    /// twice comes twice as often. clock-skew is not drawn: it holds for the whole run
    /// (worker 1's clocks at 0.25x real time, worker 2's at 4x, with libfaketime). Default:
    /// all that apply to the lock service and the resource, except the network faults
    /// (isolate-holder: lockd and --resource storage only, as root), which put every process
    /// in a network namespace of its own, and clock-skew; those run only when named.
    #[arg(long, value_name = "LIST", value_parser = parse_faults)]
    faults: Option<Faults>,
    /// Time between faults. 500ms, 2s, 1m or seconds.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration::parse_positive)]
    interval: Duration,
    /// Random seed of the fault schedule and the workers' work times (default: chosen at
    /// random and printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Start and use a loopback etcd cluster of this many members instead of lockd (needed
    /// for kill-member).
    #[arg(long, value_name = "N", conflicts_with = "endpoints")]
    etcd_members: Option<usize>,
    /// etcd binary for --etcd-members.
    #[arg(long, env = "FENCELOCK_ETCD_BIN", default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Use this running lock service (comma-separated endpoints) instead of starting one; its
    /// processes cannot be faulted.
    #[arg(long, value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// TLS and credentials towards the lock service given with --endpoints (the workers get
    /// them too).
    #[command(flatten)]
    tls: super::EtcdConnect,
    /// Where the workers' data lives: `storage` (fencelock's storage server), `postgres` (a
    /// table row, fenced by `fence::postgres`; the checker starts its own PostgreSQL unless
    /// --database-url is given) or `etcd` (a key in the lock service, written by
    /// `fence::etcd`'s apply_held).
    #[arg(long, value_name = "RESOURCE", default_value = "storage")]
    resource: Resource,
    /// With --resource postgres: use this database instead of starting a private server
    /// (the checker keeps its tables in schema fencelock_check; no kill-postgres).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// The fencing policy: the storage's (strict, writes, seed, off); for postgres and etcd,
    /// strict uses the adapter's fence and off leaves it out.
    #[arg(long, value_name = "POLICY", default_value = "strict")]
    fencing: Policy,
    /// Run once per policy (strict, writes, seed, off; strict and off for postgres and etcd)
    /// with the same random seed and faults.
    #[arg(long, conflicts_with = "fencing")]
    compare: bool,
    /// Directory for the history files, reports and timelines (one subdirectory per policy).
    #[arg(long, value_name = "DIR", default_value = "fencelock-check.out")]
    out: PathBuf,
    /// Print the result as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Analyse the histories of an earlier check kept in DIR (its --out) again, instead of
    /// running one: reports and timelines are rewritten there.
    #[arg(long, value_name = "DIR")]
    analyse: Option<PathBuf>,
}

/// The `--faults` list; `none` is the empty list (a run with no faults at all).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Faults(Vec<FaultKind>);

fn parse_faults(text: &str) -> Result<Faults, String> {
    if text.trim() == "none" {
        return Ok(Faults(Vec::new()));
    }
    let names = || {
        FaultKind::value_variants()
            .iter()
            .filter_map(|f| f.to_possible_value())
            .map(|v| v.get_name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    text.split(',')
        .map(|name| {
            FaultKind::from_str(name.trim(), false)
                .map_err(|_| format!("unknown fault {name:?} (faults: {}; or none)", names()))
        })
        .collect::<Result<_, _>>()
        .map(Faults)
}

pub async fn run(args: CheckArgs) -> anyhow::Result<u8> {
    let backend = match (args.etcd_members, args.endpoints) {
        (Some(0), _) => return Err(exit::usage("--etcd-members must be at least 1")),
        (Some(members), _) => Backend::Etcd {
            members,
            binary: args.etcd_bin,
        },
        (None, Some(endpoints)) => Backend::External(endpoints),
        (None, None) => Backend::Lockd,
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let policies = if args.compare {
        run::compared_policies(args.resource)
    } else {
        vec![args.fencing]
    };
    let options = run::Options {
        duration: args.duration,
        clients: args.clients,
        ttl: args.ttl,
        lock: args.lock,
        workload: args.workload,
        work: args.work,
        faults: args.faults.map(|Faults(list)| list),
        interval: args.interval,
        seed,
        backend,
        resource: args.resource,
        database_url: args.database_url,
        policies,
        out: args.out,
        binary: current_exe()?,
        progress: !args.json,
        connect: args.tls.connect_options()?,
        worker_env: args.tls.as_env(),
    };
    if !args.json && args.analyse.is_none() {
        eprintln!("fencelock check: seed {seed} (repeat with --seed {seed})");
    }
    // Interrupted, the run is dropped, which stops and reaps every process it started.
    let work = async {
        let result = match &args.analyse {
            Some(dir) => saved::load_all(dir),
            None => run::run(&options).await,
        };
        result.map_err(|e| match e {
            CheckError::Usage(message) => exit::usage(message),
            e => e.into(),
        })
    };
    let runs = unless_interrupted(work).await?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let value = saved::json(&runs);
        writeln!(stdout, "{value:#}").context("cannot write to stdout")?;
    } else {
        write!(stdout, "{}", saved::table(&runs)).context("cannot write to stdout")?;
        for run in &runs {
            writeln!(
                stdout,
                "{}: histories, report.json and timeline.svg in {}",
                run.policy,
                run.dir.display()
            )
            .context("cannot write to stdout")?;
        }
    }
    // Only strict claims safety; the weaker policies are run to show their losses.
    let violated = runs
        .iter()
        .any(|r| r.policy == Policy::Strict && !r.report.valid());
    Ok(if violated {
        exit::UNSAFE
    } else {
        exit::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_a_list_of_names_or_none() {
        assert_eq!(parse_faults("none"), Ok(Faults(vec![])));
        assert_eq!(
            parse_faults("revoke,kill-storage,revoke"),
            Ok(Faults(vec![
                FaultKind::Revoke,
                FaultKind::KillStorage,
                FaultKind::Revoke
            ]))
        );
        let error = parse_faults("revoke,unplug-the-moon").unwrap_err();
        assert!(
            error.contains("unplug-the-moon") && error.contains("freeze-holder"),
            "{error}"
        );
        assert!(
            parse_faults("none,revoke").is_err(),
            "none is the whole list or nothing"
        );
    }

    #[test]
    fn the_set_workload_is_the_default_and_the_counter_stays() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            check: CheckArgs,
        }
        use clap::Parser as _;
        let default = Cli::try_parse_from(["check"]).expect("no flag is required");
        assert_eq!(default.check.workload, Workload::Set);
        let counter = Cli::try_parse_from(["check", "--workload", "counter"]).unwrap();
        assert_eq!(counter.check.workload, Workload::Counter);
        assert!(Cli::try_parse_from(["check", "--workload", "queue"]).is_err());
    }

    #[test]
    fn fault_names_on_the_command_line_are_the_names_in_the_files() {
        for fault in FaultKind::value_variants() {
            let value = fault.to_possible_value().expect("no fault is skipped");
            assert_eq!(value.get_name(), fault.name());
        }
    }
}
