//! The `[supervisor]` keys of `corral serve`: `max_agents`, `control_socket`,
//! `control_group`, `admins` and `metrics_listen`, checked and resolved (user and group names
//! to ids, the metrics address to a socket address on loopback unless a host is given).

use super::schema::Supervisor;
use super::{ConfigError, SupervisorConfig};
use nix::unistd::{Group, User};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use toml::Spanned;

/// Most `instances` of one service agent.
pub const MAX_INSTANCES: u32 = 10_000;

/// The name of the control socket under the state directory, when `control_socket` is unset.
pub const DEFAULT_CONTROL_SOCKET: &str = "control.sock";

/// The defaults of the daemon's keys (what depends on `state_dir`).
pub(super) fn defaults(out: &mut SupervisorConfig) {
    out.control_socket = out.state_dir.join(DEFAULT_CONTROL_SOCKET);
}

/// Check and resolve the daemon's keys of `[supervisor]` into `out` (whose `state_dir` is
/// resolved already). `err` makes an error located at a span; `path` resolves a path against
/// the config's directory.
pub(super) fn resolve(
    out: &mut SupervisorConfig,
    raw: &Supervisor,
    err: impl Fn(Range<usize>, String) -> ConfigError,
    path: impl Fn(&str) -> PathBuf,
) -> Result<(), ConfigError> {
    defaults(out);
    if let Some(m) = &raw.max_agents {
        if *m.get_ref() == 0 {
            return Err(err(m.span(), "max_agents must be at least 1".into()));
        }
        out.max_agents = Some(*m.get_ref());
    }
    if let Some(p) = &raw.control_socket {
        if p.get_ref().is_empty() {
            return Err(err(p.span(), "control_socket must not be empty".into()));
        }
        out.control_socket = path(p.get_ref());
    }
    if let Some(g) = &raw.control_group {
        out.control_group = Some(group_id(g).map_err(|m| err(g.span(), m))?);
    }
    for a in raw.admins.iter().flatten() {
        let text = a.get_ref();
        match text.strip_prefix("group:") {
            Some(g) => {
                let gid = group_id(&Spanned::new(a.span(), g.to_string()))
                    .map_err(|m| err(a.span(), format!("admins: {m}")))?;
                out.admins.gids.push(gid);
            }
            None => {
                let uid = user_id(text).map_err(|m| err(a.span(), format!("admins: {m}")))?;
                out.admins.uids.push(uid);
            }
        }
    }
    if let Some(m) = &raw.metrics_listen {
        out.metrics_listen = Some(metrics_addr(m.get_ref()).map_err(|e| err(m.span(), e))?);
    }
    Ok(())
}

/// A user name or a numeric uid.
fn user_id(text: &str) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        return Ok(n);
    }
    match User::from_name(text) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!(
            "no user named {text:?} on this host (give a user name, a uid, or \"group:NAME\")"
        )),
        Err(e) => Err(format!("looking up user {text:?}: {e}")),
    }
}

/// A group name or a numeric gid.
fn group_id(g: &Spanned<String>) -> Result<u32, String> {
    let text = g.get_ref();
    if let Ok(n) = text.parse::<u32>() {
        return Ok(n);
    }
    match Group::from_name(text) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {text:?} on this host")),
        Err(e) => Err(format!("looking up group {text:?}: {e}")),
    }
}

/// `"9184"` (a port on 127.0.0.1), `"127.0.0.1:9184"` or `"[::1]:9184"`.
fn metrics_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!(
            "metrics_listen must be a port (served on 127.0.0.1) or ADDRESS:PORT, found {text:?}"
        )
    })
}

/// Where the daemon running on the config file at `path` listens, read from that file alone
/// even when the rest of it is invalid now (an edit not yet reloaded, which the daemon refused):
/// `[supervisor] control_socket`, else `control.sock` under `[supervisor] state_dir`, each
/// relative to the file's directory. `None` when the file says neither (or is no TOML).
pub fn control_socket_of(path: &std::path::Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let sup = table.get("supervisor")?.as_table()?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    if let Some(s) = sup.get("control_socket").and_then(toml::Value::as_str) {
        return Some(base.join(s));
    }
    let dir = sup.get("state_dir").and_then(toml::Value::as_str)?;
    Some(base.join(dir).join(DEFAULT_CONTROL_SOCKET))
}
