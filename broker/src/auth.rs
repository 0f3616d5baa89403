//! Client authentication at CONNECT: the anonymous-client policy, checked against the
//! password file the configuration loaded (`password_file.rs`).
//!
//! A password never leaves this module and `password_file.rs`: not in logs, errors or events.

use crate::codec::{connack_v3, reason as rc};
use crate::config::Config;
use crate::disconnect::DisconnectReason;

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A username whose password doesn't match, or that no password file lists.
    BadCredentials,
    /// No username, and anonymous clients are not allowed.
    Anonymous,
}

impl Denied {
    /// The CONNACK reason code for an MQTT 5 client.
    pub fn v5_code(self) -> u8 {
        match self {
            Denied::BadCredentials => rc::BAD_USER_NAME_OR_PASSWORD,
            Denied::Anonymous => rc::NOT_AUTHORIZED,
        }
    }

    /// The CONNACK return code for an MQTT 3.x client.
    pub fn v3_code(self) -> u8 {
        match self {
            Denied::BadCredentials => connack_v3::BAD_USER_NAME_OR_PASSWORD,
            Denied::Anonymous => connack_v3::NOT_AUTHORIZED,
        }
    }

    pub fn reason(self) -> DisconnectReason {
        match self {
            Denied::BadCredentials => DisconnectReason::NotAuthenticated,
            Denied::Anonymous => DisconnectReason::NotAuthorized,
        }
    }

    /// Told to MQTT 5 clients (reason string) and logged.
    pub fn detail(self) -> &'static str {
        match self {
            Denied::BadCredentials => "bad username or password",
            Denied::Anonymous => "anonymous clients are not allowed",
        }
    }
}

/// Decides whether a CONNECT with `username` and `password` may go on.
///
/// A client without a username is anonymous (its password, if any, is ignored). Without a
/// password file a username proves nothing, so the client counts as anonymous too.
pub fn authenticate(
    config: &Config,
    username: Option<&str>,
    password: Option<&[u8]>,
) -> Result<(), Denied> {
    match (username, config.passwords.as_deref()) {
        (Some(username), Some(passwords)) => {
            if passwords.verify(username, password.unwrap_or_default()) {
                Ok(())
            } else {
                tracing::debug!(username, "bad username or password");
                Err(Denied::BadCredentials)
            }
        }
        (None, _) if !config.allow_anonymous => Err(Denied::Anonymous),
        (Some(_), None) if !config.allow_anonymous => Err(Denied::BadCredentials),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password_file::Passwords;
    use std::sync::Arc;

    fn config(allow_anonymous: bool, file: Option<&str>) -> Config {
        Config {
            allow_anonymous,
            passwords: file.map(|text| Arc::new(Passwords::parse(text).unwrap())),
            ..Config::default()
        }
    }

    #[test]
    fn the_default_lets_everyone_in() {
        let c = Config::default();
        assert_eq!(authenticate(&c, None, None), Ok(()));
        assert_eq!(authenticate(&c, Some("anyone"), Some(b"x")), Ok(()));
    }

    #[test]
    fn with_a_password_file_a_username_must_match() {
        let c = config(true, Some("u:plain:pw\n"));
        assert_eq!(authenticate(&c, Some("u"), Some(b"pw")), Ok(()));
        assert_eq!(
            authenticate(&c, Some("u"), Some(b"nope")),
            Err(Denied::BadCredentials)
        );
        assert_eq!(
            authenticate(&c, Some("u"), None),
            Err(Denied::BadCredentials)
        );
        assert_eq!(
            authenticate(&c, Some("stranger"), Some(b"pw")),
            Err(Denied::BadCredentials)
        );
        // Anonymous clients are still welcome, password or not.
        assert_eq!(authenticate(&c, None, None), Ok(()));
        assert_eq!(authenticate(&c, None, Some(b"pw")), Ok(()));
    }

    #[test]
    fn anonymous_clients_can_be_refused() {
        let c = config(false, Some("u:plain:pw\n"));
        assert_eq!(authenticate(&c, None, Some(b"pw")), Err(Denied::Anonymous));
        assert_eq!(authenticate(&c, Some("u"), Some(b"pw")), Ok(()));
        // Without a file (the configuration refuses this) nobody could prove who they are.
        let c = config(false, None);
        assert_eq!(authenticate(&c, None, None), Err(Denied::Anonymous));
        assert_eq!(
            authenticate(&c, Some("u"), Some(b"pw")),
            Err(Denied::BadCredentials)
        );
    }

    #[test]
    fn refusals_map_to_the_contract() {
        let bad = Denied::BadCredentials;
        assert_eq!((bad.v5_code(), bad.v3_code()), (0x86, 4));
        assert_eq!(bad.reason(), DisconnectReason::NotAuthenticated);
        let anon = Denied::Anonymous;
        assert_eq!((anon.v5_code(), anon.v3_code()), (0x87, 5));
        assert_eq!(anon.reason(), DisconnectReason::NotAuthorized);
    }
}
