//! The cluster settings that need more than a value check: the node id taken from the
//! host name (a StatefulSet's ordinal) and the settings that depend on each other.

use std::collections::HashMap;

use super::table::env_var_name;
use super::{one_line, Config, ConfigError, Origin};

/// The node id the ordinal ending `hostname`'s first label gives (`skein-2` → 3, as a
/// StatefulSet's pod 2 is its third), set on `config`; returns that label, the default node
/// name. A node id set as well is refused: one of the two would be ignored.
pub(super) fn id_from_hostname(
    config: &mut Config,
    hostname: &str,
    origins: &HashMap<&'static str, Origin>,
) -> Result<String, ConfigError> {
    let origin = origins
        .get("node_id_from_hostname")
        .cloned()
        .unwrap_or_else(|| Origin::Env(env_var_name("node_id_from_hostname")));
    if let Some(node_id_origin) = origins.get("node_id") {
        return Err(ConfigError::Invalid {
            setting: "node_id",
            value: config.node_id.to_string(),
            expected: String::from("no node_id when node_id_from_hostname is true"),
            origin: node_id_origin.clone(),
        });
    }
    let label = hostname.trim().split('.').next().unwrap_or_default();
    let ordinal = label
        .rsplit_once('-')
        .map(|(_, digits)| digits)
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u64>().ok())
        .and_then(|ordinal| ordinal.checked_add(1));
    match ordinal {
        Some(id) => {
            config.node_id = id;
            Ok(label.to_owned())
        }
        None => Err(ConfigError::Invalid {
            setting: "node_id_from_hostname",
            value: String::from("true"),
            expected: format!(
                "a host name ending in -ORDINAL, such as skein-2 (node 3); this host is {:?}",
                one_line(hostname)
            ),
            origin,
        }),
    }
}

/// The kernel's host name (Linux), for `node_id_from_hostname` without `HOSTNAME`.
pub(super) fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// The cluster settings that depend on each other: the election timeout leaves room for
/// heartbeats, and a static peer list names this node.
pub(super) fn check_cluster(
    config: &Config,
    origins: &HashMap<&'static str, Origin>,
) -> Result<(), ConfigError> {
    // The defaults agree with each other: a violation has an origin.
    let origin = origins
        .get("raft_election_timeout_ms")
        .or_else(|| origins.get("raft_heartbeat_ms"));
    if let (true, Some(origin)) = (
        config.raft_election_timeout_ms < 2 * config.raft_heartbeat_ms,
        origin,
    ) {
        return Err(ConfigError::Invalid {
            setting: "raft_election_timeout_ms",
            value: config.raft_election_timeout_ms.to_string(),
            expected: format!(
                "at least twice raft_heartbeat_ms ({} ms), or followers start elections between heartbeats",
                config.raft_heartbeat_ms
            ),
            origin: origin.clone(),
        });
    }
    let origin = origins
        .get("node_down_after_ms")
        .or_else(|| origins.get("raft_election_timeout_ms"));
    if let (true, Some(origin)) = (
        config.node_down_after_ms <= config.raft_election_timeout_ms,
        origin,
    ) {
        return Err(ConfigError::Invalid {
            setting: "node_down_after_ms",
            value: config.node_down_after_ms.to_string(),
            expected: format!(
                "above raft_election_timeout_ms ({} ms): a dead leader is replaced by an election before its clients are marked offline",
                config.raft_election_timeout_ms
            ),
            origin: origin.clone(),
        });
    }
    // A node that is not among the peers may join through `join` instead (a StatefulSet
    // scaled up past the replicas its peers list names).
    if let (false, true, Some(origin)) = (
        config.peers.is_empty(),
        config.join.is_empty(),
        origins.get("peers"),
    ) {
        let peers = skein_cluster::parse_peers(&config.peers).unwrap_or_default();
        if !peers.iter().any(|p| p.id == config.node_id) {
            return Err(ConfigError::Invalid {
                setting: "peers",
                value: format!("{:?}", config.peers),
                expected: format!(
                    "an entry for this node's id {} (or join, to join through it instead)",
                    config.node_id
                ),
                origin: origin.clone(),
            });
        }
    }
    Ok(())
}
