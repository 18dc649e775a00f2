//! The contracts of a plan's agents, for checking its field paths before it runs: each agent
//! is asked once (started up to its handshake, then stopped: `Supervisor::probe`) and what it
//! declared is cached in `<state_dir>/contracts/`, keyed by the agent's settings and its
//! program file, so that later runs and validations start nothing.

use super::Plan;
use crate::run::Supervisor;
use corral_proto::Contract;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The cache key of an agent's contract: its settings and its program file's size and time.
fn fingerprint(sup: &Supervisor, agent: &str) -> Option<String> {
    let spec = sup.config().agents.get(agent)?;
    let program = spec.command.first()?;
    let stamp = std::fs::metadata(program)
        .ok()
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}:{}", m.len(), m.mtime(), m.mtime_nsec())
        })
        .unwrap_or_default();
    Some(crate::config::digest(
        format!("{spec:?}|{stamp}").as_bytes(),
    ))
}

fn cache_file(sup: &Supervisor, agent: &str, key: &str) -> PathBuf {
    sup.config()
        .supervisor
        .state_dir
        .join("contracts")
        .join(format!("{agent}-{}.json", &key[..16.min(key.len())]))
}

/// The contracts of the agents `plan` uses, from the cache or by asking each agent; an agent
/// that cannot be started is left out (its paths are not checked; running it will say why).
pub async fn contracts(sup: &Supervisor, plan: &Plan) -> BTreeMap<String, Contract> {
    let mut out = BTreeMap::new();
    let agents: std::collections::BTreeSet<&str> =
        plan.nodes.iter().map(|n| n.agent.as_str()).collect();
    for agent in agents {
        let Some(key) = fingerprint(sup, agent) else {
            continue;
        };
        let file = cache_file(sup, agent, &key);
        if let Some(c) = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Contract>(&b).ok())
        {
            out.insert(agent.to_string(), c);
            continue;
        }
        match sup.probe(agent).await {
            Ok(p) => {
                if let Some(c) = p.contract {
                    if let Some(dir) = file.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    if let Ok(text) = serde_json::to_vec(&c) {
                        let _ = std::fs::write(&file, text);
                    }
                    out.insert(agent.to_string(), c);
                }
            }
            Err(e) => tracing::warn!(agent, "cannot ask for its contract: {e}"),
        }
    }
    out
}
