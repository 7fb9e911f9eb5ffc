//! A route: the steps a request runs through, in order, with how many
//! retries each. Made by `routing`, walked by `execute`.

use crate::config::TaskId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Index into `Chain::targets`.
    pub target: usize,
    pub max_retries: u32,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub steps: Vec<Step>,
    pub task: Option<TaskId>,
    pub minor: bool,
    /// Started at the first tier's `escalate.to` (docs/configuration.md, `escalate`).
    pub escalated: bool,
    /// The task's retries per tier, if it sets them.
    pub task_retries: Option<u32>,
    /// `x-cascade-max-retries`, if sent.
    pub retries_cap: Option<u32>,
}

impl Route {
    /// Retries for a target of this request: the task's or the tier's, capped
    /// by the header.
    pub fn retries_for(&self, configured: u32) -> u32 {
        let r = self.task_retries.unwrap_or(configured);
        self.retries_cap.map_or(r, |cap| cap.min(r))
    }
}
