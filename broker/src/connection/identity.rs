//! The client's TLS certificate as its identity: `use_identity_as_username` (Mosquitto's
//! name for it) and `use_identity_as_client_id` take the certificate's common name in place
//! of what CONNECT says.

use super::PeerIdentity;
use crate::codec::Connect;
use crate::config::Config;

/// Applies the identity settings to `c`. Ok(true) when the username now comes from a
/// verified certificate, which then authenticates the client (no password is checked, as
/// with Mosquitto). Err(why) when a setting is on and a TLS client has no usable identity.
/// Plain TCP and WebSocket clients are left as they are.
pub(super) fn apply(
    config: &Config,
    identity: &PeerIdentity,
    c: &mut Connect,
) -> Result<bool, &'static str> {
    let (as_username, as_client_id) = (
        config.use_identity_as_username,
        config.use_identity_as_client_id,
    );
    if !as_username && !as_client_id {
        return Ok(false);
    }
    let common_name = match identity {
        PeerIdentity::NotTls => return Ok(false),
        PeerIdentity::NoCertificate => return Err("no client certificate"),
        PeerIdentity::Certificate {
            common_name: None, ..
        } => return Err("client certificate without a common name"),
        PeerIdentity::Certificate {
            common_name: Some(cn),
            ..
        } => cn,
    };
    if as_username {
        c.username = Some(common_name.to_string());
        c.password = None;
    }
    if as_client_id {
        c.client_id = common_name.to_string();
    }
    Ok(as_username)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect() -> Connect {
        Connect {
            protocol: crate::codec::ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 60,
            client_id: "sent-id".into(),
            will: None,
            username: Some("sent-user".into()),
            password: Some(bytes::Bytes::from_static(b"secret")),
            properties: Default::default(),
        }
    }

    fn certificate(cn: Option<&str>) -> PeerIdentity {
        PeerIdentity::Certificate {
            common_name: cn.map(Into::into),
            device: None,
        }
    }

    #[test]
    fn off_by_default_and_for_plain_connections() {
        let mut c = connect();
        assert_eq!(
            apply(&Config::default(), &certificate(Some("cn")), &mut c),
            Ok(false)
        );
        assert_eq!(c.username.as_deref(), Some("sent-user"));
        let config = Config {
            use_identity_as_username: true,
            ..Config::default()
        };
        assert_eq!(apply(&config, &PeerIdentity::NotTls, &mut c), Ok(false));
        assert_eq!(c.client_id, "sent-id");
    }

    #[test]
    fn the_common_name_replaces_username_or_client_id() {
        let config = Config {
            use_identity_as_username: true,
            ..Config::default()
        };
        let mut c = connect();
        assert_eq!(
            apply(&config, &certificate(Some("device-7")), &mut c),
            Ok(true)
        );
        assert_eq!(c.username.as_deref(), Some("device-7"));
        assert_eq!(c.password, None);
        assert_eq!(c.client_id, "sent-id");
        let config = Config {
            use_identity_as_client_id: true,
            ..Config::default()
        };
        let mut c = connect();
        assert_eq!(
            apply(&config, &certificate(Some("device-7")), &mut c),
            Ok(false)
        );
        assert_eq!(c.client_id, "device-7");
        assert_eq!(c.username.as_deref(), Some("sent-user"));
    }

    #[test]
    fn a_tls_client_without_a_usable_certificate_is_refused() {
        let config = Config {
            use_identity_as_client_id: true,
            ..Config::default()
        };
        let mut c = connect();
        assert!(apply(&config, &PeerIdentity::NoCertificate, &mut c).is_err());
        assert!(apply(&config, &certificate(None), &mut c).is_err());
    }
}
