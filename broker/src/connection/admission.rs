//! Authentication at CONNECT as the handshake runs it: the sources (`auth.rs`), what the
//! connection may then do, and the disconnect when its token expires.

use std::sync::Arc;
use std::time::Duration;

use super::handshake::Refusal;
use super::socket::Socket;
use super::PeerIdentity;
use crate::auth_http::authz::{Action, AuthzRequest, Decision, Lookup};
use crate::broker::Broker;
use crate::codec::Connect;
use crate::events::{ClientInfo, Transport};
use crate::message::now_ms;
use crate::session::{Kick, KickSignal};

/// What a connection keeps of its authentication.
pub(super) struct Admitted {
    pub(super) authz: Option<Box<crate::auth::authz::Authz>>,
    /// When its token expires (seconds since the epoch).
    pub(super) token_expiry: Option<u64>,
    pub(super) username_verified: bool,
    /// The serial number of the device certificate the connection uses (see
    /// `certificate_check.rs`); kept here, boxed, rather than in the handshake's future.
    pub(super) certificate: Option<Arc<str>>,
}

/// What the connection's transport tells of the client besides its CONNECT.
pub(super) struct Presented {
    /// The listener it came through (`mqtt`, `mqtts`, `ws`, `wss`).
    listener: &'static str,
    /// Its verified client certificate's subject common name.
    cert_common_name: Option<Box<str>>,
    /// The certificate named the user (`use_identity_as_username`): no password to check,
    /// as with Mosquitto.
    certified: bool,
}

impl Presented {
    pub(super) fn of(socket: &Socket, certified: bool) -> Presented {
        let cert_common_name = match socket.identity() {
            PeerIdentity::Certificate { common_name, .. } => common_name.clone(),
            PeerIdentity::NotTls | PeerIdentity::NoCertificate => None,
        };
        Presented {
            listener: listener_of(socket),
            cert_common_name,
            certified,
        }
    }
}

/// The listener a socket came through: `mqtt`, `mqtts`, `ws` or `wss`.
pub(super) fn listener_of(socket: &Socket) -> &'static str {
    let tls = !matches!(socket.identity(), PeerIdentity::NotTls);
    match (socket.transport(), tls) {
        (Transport::Tcp, false) => "mqtt",
        (Transport::Tcp, true) => "mqtts",
        (Transport::WebSocket, false) => "ws",
        (Transport::WebSocket, true) => "wss",
    }
}

/// Authenticates the CONNECT `c` and works out what it may do.
pub(super) async fn admit(
    broker: &Broker,
    c: &Connect,
    info: &ClientInfo,
    presented: Presented,
) -> Result<Box<Admitted>, Refusal> {
    let verdict = if presented.certified {
        crate::auth::Verdict {
            verified: true,
            superuser: false,
            token: None,
        }
    } else {
        authenticate(broker, c, info, &presented).await?
    };
    Ok(Box::new(Admitted {
        token_expiry: verdict.token.as_ref().and_then(|t| t.exp),
        username_verified: verdict.verified,
        authz: authz_of(broker, c, info, verdict),
        certificate: None,
    }))
}

/// Authenticates the CONNECT `c` (see `auth.rs`).
async fn authenticate(
    broker: &Broker,
    c: &Connect,
    info: &ClientInfo,
    presented: &Presented,
) -> Result<crate::auth::Verdict, Refusal> {
    let credentials = crate::auth::Credentials {
        client_id: info.client_id.as_str(),
        username: c.username.as_deref(),
        password: c.password.as_deref(),
    };
    let origin = crate::auth::Origin {
        peer: info.peer.ip(),
        listener: presented.listener,
        cert_common_name: presented.cert_common_name.as_deref(),
        protocol_level: c.protocol.level(),
    };
    crate::auth::authenticate_connect(broker, credentials, origin)
        .await
        .map_err(|denied| {
            Refusal::connack(
                c.protocol,
                denied.v5_code(),
                denied.v3_code(),
                denied.reason(),
                denied.detail(),
            )
        })
}

/// What the connection may do (None: nothing beyond the event topics' default).
fn authz_of(
    broker: &Broker,
    c: &Connect,
    info: &ClientInfo,
    verdict: crate::auth::Verdict,
) -> Option<Box<crate::auth::authz::Authz>> {
    let verified = verdict.verified;
    // The client id in force (an assigned one for an empty CONNECT client id).
    let subject = crate::auth::authz::Subject {
        client_id: info.client_id.as_str(),
        username: c.username.as_deref(),
        peer: info.peer.ip(),
        verified,
        superuser: verdict.superuser,
        token_acl: verdict.token.and_then(|t| t.acl),
    };
    crate::auth::authz::Authz::new(
        subject,
        broker.acl.as_ref(),
        &broker.config.events_subscribe_usernames,
    )
}

/// The HTTP authorizer's decision on publishing `will` (None: not asked: off, or the
/// client is a superuser or its token refuses the topic). Asked at CONNECT, as the ACL
/// checks it: the will is published when the client is gone, with nobody to tell.
pub(super) async fn will_decision(
    broker: &Broker,
    info: &ClientInfo,
    listener: &str,
    will: &crate::codec::Will,
    admitted: &Admitted,
) -> Option<Decision> {
    let http = broker.authz_http.as_deref()?;
    if let Some(authz) = admitted.authz.as_deref() {
        if authz.publish_settled(&will.topic).is_some() {
            return None;
        }
    }
    let request = AuthzRequest {
        client_id: info.client_id.as_str(),
        username: info.username.as_deref(),
        peer: info.peer.ip(),
        listener,
        action: Action::Publish,
        topic: &will.topic,
        qos: will.qos as u8,
        retain: will.retain,
    };
    match http.lookup(&request) {
        Lookup::Known(decision) => Some(decision),
        Lookup::Ask(question) => Some(http.ask(question).await),
    }
}

/// Whether the will on `topic` may be published, given the authorizer's decision.
pub(super) fn will_allowed(admitted: &mut Admitted, topic: &str, http: Option<Decision>) -> bool {
    match http {
        Some(Decision::Allow) => true,
        Some(Decision::Deny) => false,
        Some(Decision::Ignore) | None => {
            admitted.authz.as_mut().is_none_or(|a| a.may_publish(topic))
        }
    }
}

/// Ends the connection of `kick` when its token expires (`exp`, seconds since the
/// epoch), with the `authentication_expired` reason.
pub(super) fn expire_at(broker: &Arc<Broker>, kick: &Arc<KickSignal>, exp: u64) {
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(exp.saturating_mul(1000).saturating_sub(now_ms()));
    // Weak, and looked at every EXPIRY_CHECK: a connection that ended (its session
    // dropped the signal) ends its watch within that, not at its token's expiry, so
    // clients that come and go with long-lived tokens do not pile up sleeping tasks.
    let kick = Arc::downgrade(kick);
    let shutdown = broker.shutdown.clone();
    broker.tasks.spawn(async move {
        loop {
            let wake = deadline.min(tokio::time::Instant::now() + EXPIRY_CHECK);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.cancelled() => return,
            }
            let Some(kick) = kick.upgrade() else { return };
            if tokio::time::Instant::now() >= deadline {
                if kick.send(Kick::AuthExpired) {
                    tracing::info!("token expired: disconnecting its client");
                }
                return;
            }
        }
    });
}

/// How often a token's watch looks whether its connection is still there.
const EXPIRY_CHECK: Duration = Duration::from_secs(30);
