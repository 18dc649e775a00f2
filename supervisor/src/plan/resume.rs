//! Resuming a plan run: which run a resume may take (a plan run of the same plan file, on the
//! same input, that no live supervisor runs), and taking it in the journal.

use super::Plan;
use crate::run::{RunError, Supervisor};
use corral_proto::Value;

/// Whether `view` may be resumed as a run of `plan` on `input`, and if so, take it: a plan run
/// of this plan (its text's digest), on the same input (when the journal recorded it), that no
/// other live supervisor runs (see `journal::sqlite::claim_run`).
pub(super) fn resumable(
    sup: &Supervisor,
    plan: &Plan,
    view: &crate::journal::RunView,
    input: &Value,
) -> Result<(), RunError> {
    let refuse = |reason: String| RunError::Resume {
        run_id: view.run_id.clone(),
        reason,
    };
    if view.kind != "plan" {
        return Err(refuse(format!(
            "it is a {} of agent `{}`, not a plan run",
            view.kind, view.agent
        )));
    }
    let ran = view.config_hash.rsplit_once('+').map(|(_, p)| p);
    if view.agent != plan.name || ran != Some(plan.digest.as_str()) {
        return Err(refuse(format!(
            "it ran plan `{}` ({}); {} is plan `{}` ({}): resume a run with the plan file it \
             ran",
            view.agent,
            short(ran.unwrap_or("?")),
            plan.path.display(),
            plan.name,
            short(&plan.digest)
        )));
    }
    if let Some(recorded) = &view.input {
        if *recorded != input.to_json() {
            return Err(refuse(format!(
                "its input was {}; this one differs (resume without --input to use the \
                 recorded one)",
                clip(&recorded.to_string())
            )));
        }
    }
    let Some(path) = sup.journal_path() else {
        return Err(refuse(
            "the journal is off (`[supervisor] journal = false`)".into(),
        ));
    };
    match crate::journal::sqlite::claim_run(&path, &view.run_id)? {
        crate::journal::sqlite::Claim::Taken => Ok(()),
        crate::journal::sqlite::Claim::Missing => Err(refuse("it is not in the journal".into())),
        crate::journal::sqlite::Claim::Busy(pid) => Err(refuse(format!(
            "a supervisor still runs it{}",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ))),
    }
}

/// A digest's first 12 characters.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// A long JSON text cut to 200 bytes (on a character boundary) for a message.
fn clip(text: &str) -> String {
    if text.len() <= 200 {
        return text.to_string();
    }
    let mut end = 200;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
