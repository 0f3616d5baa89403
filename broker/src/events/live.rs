//! Which connections are live, as the sink dialects see them: tells the end of a session
//! that was reported connected from the end of a connection refused before it had one
//! (both raise `client.disconnected`).

use std::collections::HashMap;

use super::ClientInfo;
use crate::ids::ClientId;

/// Connections that raised `client.connected` and have not yet ended, keyed by client id
/// and CONNECT time (a takeover within the same millisecond counts twice).
#[derive(Debug, Default)]
pub struct LiveConnections {
    live: HashMap<(ClientId, u64), u32>,
}

impl LiveConnections {
    pub fn connected(&mut self, client: &ClientInfo) {
        *self.live.entry(key(client)).or_insert(0) += 1;
    }

    /// Forgets the connection; false if it was never reported connected.
    pub fn disconnected(&mut self, client: &ClientInfo) -> bool {
        let key = key(client);
        match self.live.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.live.remove(&key);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.live.values().map(|n| *n as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

fn key(client: &ClientInfo) -> (ClientId, u64) {
    (client.client_id.clone(), client.connected_at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;

    fn client(id: &str, at: u64) -> ClientInfo {
        ClientInfo {
            connected_at_ms: at,
            ..ClientInfo::unknown(ClientId::new(id), ProtocolVersion::V5)
        }
    }

    #[test]
    fn only_connected_connections_end() {
        let mut live = LiveConnections::default();
        assert!(!live.disconnected(&client("refused", 1)));
        live.connected(&client("a", 1));
        // A takeover: the new connection is live before the old one's end is reported.
        live.connected(&client("a", 2));
        assert!(live.disconnected(&client("a", 1)));
        assert_eq!(live.len(), 1);
        assert!(live.disconnected(&client("a", 2)));
        assert!(!live.disconnected(&client("a", 2)));
        // Same millisecond twice.
        live.connected(&client("b", 3));
        live.connected(&client("b", 3));
        assert!(live.disconnected(&client("b", 3)));
        assert!(live.disconnected(&client("b", 3)));
        assert!(live.is_empty());
    }
}
