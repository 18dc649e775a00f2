//! An agent started once up to `Ready` and stopped (`corral validate --start`): whether it can
//! start at all on this host, and the contract it declares, without running a task to its end.
//!
//! Built like a call's attempt (the same sandbox, pools and record), with no retries, no warm
//! stem and no journal: on `Ready` the attempt is stopped (`shutdown`).

use super::{new_run_id, RunError, Supervisor};
use crate::child::{self, AttemptEvent, AttemptSpec, Note, Notes, TaskInput};
use crate::record::{ExitReason, ExitRecord};
use corral_proto::{Contract, Value};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// What starting an agent once showed.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The contract it declared at its handshake; `None` when it never got to `Ready`.
    pub contract: Option<Contract>,
    /// The attempt's exit record (its `error` and `stderr_tail` say why it did not start).
    pub record: ExitRecord,
}

impl Probe {
    /// It got to `Ready`.
    pub fn ready(&self) -> bool {
        self.contract.is_some()
    }
}

impl Supervisor {
    /// Start `agent` once, wait for its `Ready` (or its end), record its contract and stop it.
    pub async fn probe(&self, agent: &str) -> Result<Probe, RunError> {
        let spec = self.agent(agent)?;
        let contract = Arc::new(Mutex::new(None));
        let seen = contract.clone();
        let notes: Notes = Arc::new(move |note| {
            if let Note::Contract(c) = note {
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
            }
        });
        let (events, mut rx) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(None);
        let aspec = AttemptSpec {
            agent: spec,
            run_id: format!("{}-probe", new_run_id(0)),
            attempt: 1,
            max_frame: self.config.supervisor.max_frame,
            cgroups: self.cgroups.clone(),
            workspaces: self.workspaces.clone(),
            stems: None,
            events: Some(events.into()),
            notes: Some(notes),
            service: None,
            task: None,
            on_spawn: None,
        };
        let task = TaskInput {
            task_id: 1,
            input: Arc::new(Value::Null),
            memory: Vec::new(),
        };
        let attempt = child::run_attempt(aspec, task, None, stopped, None);
        tokio::pin!(attempt);
        let mut listening = true;
        let out = loop {
            tokio::select! {
                out = &mut attempt => break out,
                ev = rx.recv(), if listening => match ev {
                    Some(AttemptEvent::Ready { .. }) => {
                        let _ = stop.send(Some(ExitReason::Shutdown));
                    }
                    Some(_) => {}
                    None => listening = false,
                },
            }
        };
        let contract = contract.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(Probe {
            contract,
            record: out.record,
        })
    }
}
