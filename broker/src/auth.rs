//! Client authentication at CONNECT, and what an authenticated client may do.
//!
//! Sources, asked in this order; the first that knows the client decides:
//! 1. the password file (`password_file.rs`), for the usernames it lists;
//! 2. a JWT (`jwt_secret` / `jwt_public_key_file`), when the password has a token's shape;
//! 3. the HTTP authenticator (`auth_http_url`, see `auth_http.rs`), unless it answers `ignore`;
//! 4. the anonymous-client policy: a client without a username is let in when
//!    `allow_anonymous` is true; a username no source vouched for is refused when a
//!    password file is set (or anonymous clients are not allowed), else let in unverified.
//!
//! A password never leaves this module, `password_file.rs` and the HTTP request to the
//! configured authenticator: not in logs, errors or events.
//!
//! [`authz`] holds what a connection may publish, subscribe to and receive.

pub mod authz;

use std::net::IpAddr;
use std::time::Duration;

use crate::auth_http::{Answer, AuthRequest};
use crate::broker::Broker;
use crate::codec::{connack_v3, reason as rc};
use crate::config::Config;
use crate::disconnect::DisconnectReason;
use crate::jwt::{JwtError, JwtVerifier, TokenClaims};
use crate::log_limit::LogLimit;

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A username whose password doesn't match, or that no password file lists.
    BadCredentials,
    /// No username, and anonymous clients are not allowed.
    Anonymous,
    /// A token that does not verify (signature, shape, algorithm).
    BadToken,
    /// A token that has expired.
    TokenExpired,
    /// A valid token whose `clientid` / `username` claim is not the CONNECT's.
    ClaimsMismatch,
    /// The HTTP authenticator said no.
    HttpDenied,
    /// The HTTP authenticator could not be asked (unreachable, timeout, nonsense, busy)
    /// and `auth_http_on_error` is `deny`.
    HttpUnavailable,
}

impl Denied {
    /// The CONNACK reason code for an MQTT 5 client.
    pub fn v5_code(self) -> u8 {
        match self {
            Denied::BadCredentials | Denied::BadToken | Denied::HttpDenied => {
                rc::BAD_USER_NAME_OR_PASSWORD
            }
            Denied::Anonymous | Denied::TokenExpired | Denied::ClaimsMismatch => rc::NOT_AUTHORIZED,
            Denied::HttpUnavailable => rc::SERVER_UNAVAILABLE,
        }
    }

    /// The CONNACK return code for an MQTT 3.x client.
    pub fn v3_code(self) -> u8 {
        match self {
            Denied::BadCredentials | Denied::BadToken | Denied::HttpDenied => {
                connack_v3::BAD_USER_NAME_OR_PASSWORD
            }
            Denied::Anonymous | Denied::TokenExpired | Denied::ClaimsMismatch => {
                connack_v3::NOT_AUTHORIZED
            }
            Denied::HttpUnavailable => connack_v3::SERVER_UNAVAILABLE,
        }
    }

    pub fn reason(self) -> DisconnectReason {
        match self {
            Denied::BadCredentials
            | Denied::BadToken
            | Denied::HttpDenied
            | Denied::HttpUnavailable => DisconnectReason::NotAuthenticated,
            Denied::Anonymous | Denied::ClaimsMismatch => DisconnectReason::NotAuthorized,
            Denied::TokenExpired => DisconnectReason::AuthenticationExpired,
        }
    }

    /// Told to MQTT 5 clients (reason string) and logged.
    pub fn detail(self) -> &'static str {
        match self {
            Denied::BadCredentials => "bad username or password",
            Denied::Anonymous => "anonymous clients are not allowed",
            Denied::BadToken => "invalid token",
            Denied::TokenExpired => "token expired",
            Denied::ClaimsMismatch => "the token is not for this client",
            Denied::HttpDenied => "refused by the authentication server",
            Denied::HttpUnavailable => "authentication server unavailable",
        }
    }
}

/// Who an accepted client is, as far as authentication could tell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// A source vouched for the username (the event topics' username list trusts only
    /// such usernames).
    pub verified: bool,
    /// The HTTP authenticator marked the client a superuser: no ACL applies to it.
    pub superuser: bool,
    /// The claims of the token it presented.
    pub token: Option<TokenClaims>,
}

/// What a CONNECT presents.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// The sources that need no I/O: the password file and JWT. `Ok(Some)`: decided;
/// `Ok(None)`: neither knows the client (ask the HTTP authenticator, then the policy).
pub fn authenticate_local(config: &Config, c: Credentials<'_>) -> Result<Option<Verdict>, Denied> {
    if let (Some(username), Some(passwords)) = (c.username, config.passwords.as_deref()) {
        if passwords.contains(username) {
            return if passwords.verify(username, c.password.unwrap_or_default()) {
                Ok(Some(Verdict {
                    verified: true,
                    ..Verdict::default()
                }))
            } else {
                tracing::debug!(username, "bad username or password");
                Err(Denied::BadCredentials)
            };
        }
    }
    if let (Some(verifier), Some(password)) = (config.jwt.as_deref(), c.password) {
        if JwtVerifier::looks_like_jwt(password) {
            return check_token(verifier, password, c).map(Some);
        }
    }
    Ok(None)
}

fn check_token(
    verifier: &JwtVerifier,
    password: &[u8],
    c: Credentials<'_>,
) -> Result<Verdict, Denied> {
    let token = std::str::from_utf8(password).unwrap_or_default();
    let outcome = verifier.verify(token, c.client_id, c.username);
    let label = match &outcome {
        Ok(_) => "accepted",
        Err(e) => e.label(),
    };
    metrics::counter!(crate::metrics::AUTH_JWT, "outcome" => label).increment(1);
    match outcome {
        Ok(claims) => Ok(Verdict {
            verified: true,
            superuser: false,
            token: Some(claims),
        }),
        Err(e) => {
            tracing::debug!(client_id = c.client_id, error = %e, "token refused");
            Err(match e {
                JwtError::Expired => Denied::TokenExpired,
                JwtError::ClaimsMismatch(_) => Denied::ClaimsMismatch,
                JwtError::BadSignature | JwtError::Invalid(_) => Denied::BadToken,
            })
        }
    }
}

/// Where a CONNECT came from, for the HTTP authenticator.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub peer: IpAddr,
    /// The listener: `mqtt`, `mqtts`, `ws` or `wss`.
    pub listener: &'a str,
    /// The verified TLS client certificate's subject common name (None: no certificate).
    pub cert_common_name: Option<&'a str>,
    pub protocol_level: u8,
}

/// An unreachable or failing authentication server, logged once a minute at most.
static HTTP_FAILURE_LOG: LogLimit = LogLimit::new(Duration::from_secs(60));

/// Every source in order (see the module docs). Waits for the HTTP authenticator when it
/// is asked; nothing else does.
pub async fn authenticate_connect(
    broker: &Broker,
    c: Credentials<'_>,
    origin: Origin<'_>,
) -> Result<Verdict, Denied> {
    if let Some(verdict) = authenticate_local(&broker.config, c)? {
        return Ok(verdict);
    }
    if let Some(http) = &broker.auth_http {
        let request = AuthRequest {
            client_id: c.client_id,
            username: c.username,
            password: c.password,
            peer: origin.peer,
            cert_common_name: origin.cert_common_name,
            listener: origin.listener,
            protocol_level: origin.protocol_level,
        };
        match http.ask(&request).await {
            Ok(Answer::Allow { superuser }) => {
                return Ok(Verdict {
                    verified: true,
                    superuser,
                    token: None,
                })
            }
            Ok(Answer::Deny) => return Err(Denied::HttpDenied),
            Ok(Answer::Ignore) => {}
            Err(failure) => {
                if let Some(left_out) = HTTP_FAILURE_LOG.allow() {
                    tracing::warn!(
                        outcome = failure.label(),
                        allow = http.on_error_allows(),
                        similar_lines_left_out = left_out,
                        "the authentication server could not be asked; auth_http_on_error decides"
                    );
                }
                return if http.on_error_allows() {
                    Ok(Verdict::default())
                } else {
                    Err(Denied::HttpUnavailable)
                };
            }
        }
    }
    policy(&broker.config, c.username)
}

/// The anonymous-client policy, for a client no source knew.
pub fn policy(config: &Config, username: Option<&str>) -> Result<Verdict, Denied> {
    match username {
        None if !config.allow_anonymous => Err(Denied::Anonymous),
        Some(_) if config.passwords.is_some() || !config.allow_anonymous => {
            Err(Denied::BadCredentials)
        }
        _ => Ok(Verdict::default()),
    }
}

/// Password file and policy only (no token, no HTTP): what the unit tests below pin.
pub fn authenticate(
    config: &Config,
    username: Option<&str>,
    password: Option<&[u8]>,
) -> Result<(), Denied> {
    let c = Credentials {
        client_id: "",
        username,
        password,
    };
    match authenticate_local(config, c)? {
        Some(_) => Ok(()),
        None => policy(config, username).map(|_| ()),
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
