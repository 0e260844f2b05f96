//! Placeholder analysis (replaced by the real one).
use serde::Serialize;

use super::history::{Event, FaultEvent, KeyEvent};
use crate::storage::fence::Policy;

pub struct Input {
    pub policy: Policy,
    pub events: Vec<Event>,
    pub faults: Vec<FaultEvent>,
    pub keys: Vec<KeyEvent>,
    pub final_value: Option<u64>,
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Report {
    pub lost: usize,
}

impl Report {
    pub fn valid(&self) -> bool {
        true
    }
    pub fn violations(&self) -> usize {
        0
    }
}

pub fn analyse(_input: &Input) -> Report {
    Report { lost: 0 }
}

pub fn summary_table(rows: &[(&str, &Report)]) -> String {
    rows.iter().map(|(l, r)| format!("{l}: {r:?}\n")).collect()
}
