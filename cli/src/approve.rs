//! `corral call --approve`: approvals asked on the terminal (the question on stderr, the answer
//! a line on stdin: `y` or `yes` approves, anything else or end of input denies). One question
//! at a time; the broker's `approve_timeout` still bounds each wait.

use corral::tools::{ApprovalRequest, Approver};
use std::io::{BufRead, Write};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Asks on the terminal.
pub struct TerminalApprover;

/// One question at a time.
static TERMINAL: Mutex<()> = Mutex::new(());

impl Approver for TerminalApprover {
    fn ask(&self, req: ApprovalRequest) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        std::thread::spawn(move || {
            let _one = TERMINAL.lock().unwrap_or_else(|p| p.into_inner());
            if tx.is_closed() {
                return; // timed out while waiting for its turn
            }
            eprint!(
                "corral: agent `{}` (run {}, attempt {}) calls tool `{}` with {}\nallow? [y/N] ",
                req.agent, req.run_id, req.attempt, req.tool, req.args
            );
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            let yes = match std::io::stdin().lock().read_line(&mut line) {
                Ok(0) | Err(_) => false,
                Ok(_) => matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
            };
            let _ = tx.send(yes);
        });
        rx
    }
}
