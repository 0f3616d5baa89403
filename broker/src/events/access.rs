//! Who may subscribe to the event topics (`$events/...`, `$EVENT.*`): they tell who is
//! connected from where, so only clients on the node's own machine (loopback) and the
//! usernames in `events_subscribe_usernames` get them.

use std::net::IpAddr;

/// Whether `filter` (without any `$share/{group}/` prefix) can match an event topic.
///
/// A first-level wildcard never matches a `$` topic (MQTT-4.7.2-1), so only a filter whose
/// first level names the event namespace can: `$events` (then anything below it), or a
/// level starting with `$EVENT` (`$EVENT.CONNECT` is one level; `$EVENT.CONNECT/#` matches
/// it too, and any other `$EVENT...` spelling is reserved alike).
pub fn is_event_filter(filter: &str) -> bool {
    let first = filter.split('/').next().unwrap_or("");
    first == "$events" || first.starts_with("$EVENT")
}

/// Whether a client at `ip` with `username` may subscribe to event topics.
pub fn may_subscribe(ip: IpAddr, username: Option<&str>, allowed: &[String]) -> bool {
    is_loopback(ip) || username.is_some_and(|u| allowed.iter().any(|a| a == u))
}

/// Loopback, including an IPv4 loopback address seen through an IPv6 socket.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_that_can_match_event_topics() {
        for f in [
            "$events/#",
            "$events/+",
            "$events/client_connected",
            "$events",
            "$EVENT.CONNECT",
            "$EVENT.CONNECT/#",
            "$EVENT.+",
            "$EVENT",
        ] {
            assert!(is_event_filter(f), "{f}");
        }
        for f in [
            "#",
            "+/client_connected",
            "events/#",
            "$SYS/#",
            "a/$events/#",
            "$eventsx/#",
            "",
        ] {
            assert!(!is_event_filter(f), "{f}");
        }
    }

    #[test]
    fn loopback_clients_and_listed_usernames_only() {
        let allowed = vec!["ops".to_owned(), "audit".to_owned()];
        let remote: IpAddr = "10.0.0.7".parse().unwrap();
        assert!(may_subscribe("127.0.0.1".parse().unwrap(), None, &[]));
        assert!(may_subscribe("127.1.2.3".parse().unwrap(), Some("x"), &[]));
        assert!(may_subscribe("::1".parse().unwrap(), None, &[]));
        assert!(may_subscribe(
            "::ffff:127.0.0.1".parse().unwrap(),
            None,
            &[]
        ));
        assert!(may_subscribe(remote, Some("ops"), &allowed));
        assert!(may_subscribe(remote, Some("audit"), &allowed));
        assert!(!may_subscribe(remote, None, &allowed));
        assert!(!may_subscribe(remote, Some("Ops"), &allowed));
        assert!(!may_subscribe(remote, Some("dev"), &allowed));
        assert!(!may_subscribe(remote, Some(""), &allowed));
        assert!(!may_subscribe(
            "::ffff:10.0.0.7".parse().unwrap(),
            None,
            &allowed
        ));
        assert!(!may_subscribe(
            "192.168.1.1".parse().unwrap(),
            Some("ops"),
            &[]
        ));
    }
}
