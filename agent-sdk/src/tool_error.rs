//! Tool call errors, typed: what the supervisor's broker decided, by kind.

use corral_proto::AgentError;

/// What went wrong with a tool call, by kind (`error.kind` of the `ToolResult`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolErrorKind {
    /// Not in the contract, not granted, or denied by the config.
    PermissionDenied,
    /// Granted, but no such tool is configured.
    UnknownTool,
    /// The tool ran past its timeout.
    Timeout,
    /// The tool's circuit breaker is open: try later.
    CircuitOpen,
    /// Arguments or result past their bound.
    TooLarge,
    /// The tool failed (the message says why).
    ToolFailed,
    /// An earlier attempt began this call and never finished: it may or may not have happened.
    UnknownOutcome,
    /// Approval was refused or not given in time.
    ApprovalDenied,
    /// Any other kind (`too_many_calls`, `unavailable`, `io`, …).
    Other(String),
}

impl ToolErrorKind {
    /// The kind named `s`.
    pub fn parse(s: &str) -> ToolErrorKind {
        match s {
            "permission_denied" => ToolErrorKind::PermissionDenied,
            "unknown_tool" => ToolErrorKind::UnknownTool,
            "timeout" => ToolErrorKind::Timeout,
            "circuit_open" => ToolErrorKind::CircuitOpen,
            "too_large" => ToolErrorKind::TooLarge,
            "tool_failed" => ToolErrorKind::ToolFailed,
            "unknown_outcome" => ToolErrorKind::UnknownOutcome,
            "approval_denied" => ToolErrorKind::ApprovalDenied,
            other => ToolErrorKind::Other(other.to_string()),
        }
    }

    /// Its name on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ToolErrorKind::PermissionDenied => "permission_denied",
            ToolErrorKind::UnknownTool => "unknown_tool",
            ToolErrorKind::Timeout => "timeout",
            ToolErrorKind::CircuitOpen => "circuit_open",
            ToolErrorKind::TooLarge => "too_large",
            ToolErrorKind::ToolFailed => "tool_failed",
            ToolErrorKind::UnknownOutcome => "unknown_outcome",
            ToolErrorKind::ApprovalDenied => "approval_denied",
            ToolErrorKind::Other(s) => s,
        }
    }
}

/// A tool call's error, typed (see [`Ctx::tool`](crate::Ctx::tool)). Converts back into an
/// [`AgentError`] with `?` in a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    /// What kind of failure.
    pub kind: ToolErrorKind,
    /// What happened.
    pub message: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
}

impl From<AgentError> for ToolError {
    fn from(e: AgentError) -> ToolError {
        ToolError {
            kind: ToolErrorKind::parse(&e.kind),
            message: e.message,
            retryable: e.retryable,
        }
    }
}

impl From<ToolError> for AgentError {
    fn from(e: ToolError) -> AgentError {
        AgentError::new(e.kind.as_str(), e.message, e.retryable)
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for ToolError {}

#[cfg(test)]
mod tool_error_tests {
    use super::*;

    #[test]
    fn tool_errors_are_typed_by_kind_and_convert_back() {
        for k in [
            "permission_denied",
            "unknown_tool",
            "timeout",
            "circuit_open",
            "too_large",
            "tool_failed",
            "unknown_outcome",
            "approval_denied",
            "too_many_calls",
        ] {
            let e = ToolError::from(AgentError::new(k, "m", true));
            assert_eq!(e.kind.as_str(), k);
            assert_eq!(AgentError::from(e), AgentError::new(k, "m", true));
        }
        assert_eq!(ToolErrorKind::parse("timeout"), ToolErrorKind::Timeout);
        assert!(matches!(ToolErrorKind::parse("x"), ToolErrorKind::Other(_)));
    }
}
