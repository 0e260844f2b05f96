//! Saved runs: reading a run's directory back into a [`Run`], analysing it
//! (also for `fencelock check --analyse`), and presenting runs as a table or JSON.
//!
//! Invariants: the history files in the directory, not what the checker saw live, are the
//! only input to the analysis; lock-key events after the run's end are dropped as the
//! checker's own clean-up.

use std::path::{Path, PathBuf};

use super::analysis::{self, Input, Report};
use super::history::{Event, FaultEvent, FinalSet, KeyEvent, Resource, Workload, read_lines};
use super::run::{CheckError, Run, setup};
use super::timeline;
use fencelock::storage::fence::Policy;

/// The file in a run's directory that describes the run.
pub const RUN_FILE: &str = "run.json";

/// What a run's history files do not say by themselves.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunMeta {
    pub policy: String,
    pub clients: u32,
    pub seed: u64,
    pub ttl_s: u64,
    pub duration_s: f64,
    pub lock: String,
    pub lock_service: String,
    /// Where the workers' data lived; a run recorded before other resources existed used the
    /// storage.
    #[serde(default)]
    pub resource: Resource,
    /// What the workers did; a run recorded before the set workload existed was a counter.
    #[serde(default = "Workload::recorded_before_sets")]
    pub workload: Workload,
    /// The counter read after the workers stopped (counter workload).
    pub final_value: Option<u64>,
    /// The set read after the workers stopped (set workload), when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_set: Option<FinalSet>,
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
}

/// Reads a finished run's directory, analyses it, and writes `report.json` and
/// `timeline.svg` there: the one path from history files to findings, for a run just made
/// and for `fencelock check --analyse DIR`.
pub fn load(dir: &Path) -> Result<Run, CheckError> {
    let read_error = |name: &str| setup(format!("cannot read {}", dir.join(name).display()));
    let meta_text =
        std::fs::read_to_string(dir.join(RUN_FILE)).map_err(|e| read_error(RUN_FILE)(e.into()))?;
    let meta: RunMeta =
        serde_json::from_str(&meta_text).map_err(|e| read_error(RUN_FILE)(e.into()))?;
    let policy: Policy = meta
        .policy
        .parse()
        .map_err(|e: String| read_error(RUN_FILE)(anyhow::anyhow!(e)))?;
    let mut events = Vec::new();
    for id in 1..=meta.clients {
        let name = format!("worker-{id}.jsonl");
        let path = dir.join(&name);
        if path.exists() {
            events.extend(read_lines::<Event>(&path).map_err(|e| read_error(&name)(e.into()))?);
        }
    }
    let faults = read_lines::<FaultEvent>(&dir.join("faults.jsonl"))
        .map_err(|e| read_error("faults.jsonl")(e.into()))?;
    let mut keys = read_lines::<KeyEvent>(&dir.join("lock-service.jsonl"))
        .map_err(|e| read_error("lock-service.jsonl")(e.into()))?;
    // Keys that vanish after the end are the checker's own clean-up (it revokes the leases
    // its stopped workers left), not expiries.
    keys.retain(|k| k.mono_ns <= meta.end_mono_ns);
    let input = Input {
        policy,
        resource: meta.resource,
        workload: meta.workload,
        events,
        faults,
        keys,
        final_value: meta.final_value,
        final_set: meta.final_set.clone(),
        start_mono_ns: meta.start_mono_ns,
        end_mono_ns: meta.end_mono_ns,
    };
    let report = analysis::analyse(&input);
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| setup(format!("cannot write {name}"))(e.into()))
    };
    write(
        "report.json",
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )?;
    let title = format!(
        "fencelock check · {} workload in {} · {} workers on {} · TTL {} s · seed {}",
        meta.workload.name(),
        meta.resource.as_str(),
        meta.clients,
        meta.lock_service,
        meta.ttl_s,
        meta.seed
    );
    write("timeline.svg", timeline::svg(&input, &report, &title))?;
    Ok(Run {
        policy,
        dir: dir.to_owned(),
        meta,
        report,
    })
}

/// The runs under `dir`: `dir` itself when it holds a run, or each subdirectory that does,
/// in name order.
pub fn load_all(dir: &Path) -> Result<Vec<Run>, CheckError> {
    if dir.join(RUN_FILE).exists() {
        return Ok(vec![load(dir)?]);
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| setup(format!("cannot read {}", dir.display()))(e.into()))?;
    let dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(RUN_FILE).exists())
        .collect();
    if dirs.is_empty() {
        return Err(CheckError::Usage(format!(
            "{} holds no check run (no {RUN_FILE} in it or its subdirectories)",
            dir.display()
        )));
    }
    let mut runs = dirs
        .iter()
        .map(|d| load(d))
        .collect::<Result<Vec<_>, _>>()?;
    // In the order `--compare` runs them: strongest policy first.
    let rank = |p: Policy| {
        [Policy::Strict, Policy::Writes, Policy::Seed, Policy::Off]
            .iter()
            .position(|&q| q == p)
    };
    runs.sort_by_key(|r| (rank(r.policy), r.dir.clone()));
    Ok(runs)
}

/// Groups runs by label for the summary table.
pub fn table(runs: &[Run]) -> String {
    let rows: Vec<(&str, &Report)> = runs
        .iter()
        .map(|r| (r.policy.as_str(), &r.report))
        .collect();
    analysis::summary_table(&rows)
}

/// Every run's description and report, for `--json`.
pub fn json(runs: &[Run]) -> serde_json::Value {
    serde_json::json!({
        "valid": runs.iter().all(|r| r.report.valid()),
        "runs": runs.iter().map(|r| serde_json::json!({
            "policy": r.policy.as_str(),
            "dir": r.dir,
            "run": r.meta,
            "report": r.report,
        })).collect::<Vec<_>>(),
    })
}
