//! CONNECT → CONNACK: validation, session attach and takeover; and the detach at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::admission;
use super::certificate_check;
use super::registration::{self, Claim};
use super::{Close, Connection, DisconnectReason, Socket};
use crate::broker::Broker;
use crate::codec::{
    self, connack_v3, reason as rc, ConnAck, Connect, DecodeError, Packet, Properties,
    ProtocolVersion,
};
use crate::events::{raise, ClientInfo, EventBody, EventKind, SessionEnd, Transport, WillInfo};
use crate::message::now_ms;
use crate::session::{Attachment, Kick, KickSignal, OptionalMs, Session};
use crate::topic;
use skein_seam::ClientId;

/// How long a new connection waits for the old one's session during a takeover.
const LIFECYCLE_WAIT: Duration = Duration::from_secs(10);

/// Reads CONNECT and answers it. None when the connection was refused (and closed).
pub(super) async fn accept(
    broker: Arc<Broker>,
    mut socket: Socket,
    id: u64,
    (peer, sockname): (SocketAddr, Arc<SocketAddr>),
    has_capacity: bool,
) -> Option<Connection> {
    let first = tokio::time::timeout(
        broker.config.connect_timeout(),
        read_first(&broker, &mut socket),
    )
    .await;
    let connect = match first {
        Err(_) => {
            tracing::debug!("no CONNECT within the connect timeout");
            count_refusal(DisconnectReason::ProtocolError);
            return None;
        }
        Ok(Err(refusal)) => {
            let info = raise::reported_before_connect(refusal.reason).then(|| {
                let protocol = refusal.connack.map(|(p, _)| p);
                raise::before_connect((peer, sockname), socket.transport(), protocol)
            });
            refuse(&broker, &mut socket, refusal, info.as_ref()).await;
            return None;
        }
        Ok(Ok(connect)) => connect,
    };
    let mut connect = connect;
    let protocol = connect.protocol;
    let certified = super::identity::apply(&broker.config, socket.identity(), &mut connect);
    // The client id as sent (empty when the broker is to assign one).
    let info = Arc::new(client_info(
        &connect,
        (peer, sockname),
        socket.transport(),
        broker.config.max_keepalive,
    ));
    raise::raise(&broker.events, &info, EventKind::ClientConnect, || {
        EventBody::Connect
    });
    let certified = match certified {
        Ok(certified) => certified,
        Err(why) => {
            let refusal = Refusal::connack(
                protocol,
                rc::NOT_AUTHORIZED,
                connack_v3::NOT_AUTHORIZED,
                DisconnectReason::NotAuthorized,
                why,
            );
            refuse(&broker, &mut socket, refusal, Some(&info)).await;
            return None;
        }
    };
    if !has_capacity {
        let refusal = Refusal::connack(
            protocol,
            rc::QUOTA_EXCEEDED,
            connack_v3::SERVER_UNAVAILABLE,
            DisconnectReason::TooManyConnection,
            "node at its connection limit",
        );
        refuse(&broker, &mut socket, refusal, Some(&info)).await;
        return None;
    }
    // A CONNECT read long after it was sent (this node was paused) may have been given up
    // by its client, which may be connected elsewhere by now: registering it would take
    // that live connection over for a socket nobody reads.
    if socket.peer_closed() {
        tracing::debug!(client_id = %info.client_id, %peer, "CONNECT abandoned: the client closed the socket before it was read; not registered");
        crate::metrics::connect_abandoned();
        raise::refused(&broker.events, &info, None, DisconnectReason::TcpClosed);
        return None;
    }
    match attach(&broker, socket, id, info.clone(), connect, certified).await {
        Ok(conn) => Some(conn),
        Err((mut socket, refusal)) => {
            refuse(&broker, &mut socket, refusal, Some(&info)).await;
            None
        }
    }
}

/// Why a connection is refused before a session exists.
pub(super) struct Refusal {
    reason: DisconnectReason,
    /// The CONNACK to send, if any (with the protocol to encode it in).
    connack: Option<(ProtocolVersion, u8)>,
    detail: String,
    /// The registration did not commit: counted as `cluster_unavailable` (events say
    /// `reason`), and said by a rate-limited warning (see `registration.rs`). A flag, not
    /// a label: the refusal is held in every handshake's future.
    cluster_unavailable: bool,
}

impl Refusal {
    pub(super) fn connack(
        protocol: ProtocolVersion,
        v5: u8,
        v3: u8,
        reason: DisconnectReason,
        detail: &str,
    ) -> Refusal {
        let code = if protocol.is_v5() { v5 } else { v3 };
        Refusal {
            reason,
            connack: Some((protocol, code)),
            detail: detail.to_owned(),
            cluster_unavailable: false,
        }
    }

    /// The registration did not commit (no leader, no quorum, not within
    /// `connect_commit_timeout_ms`): Server Unavailable, 0x88 / return code 3.
    pub(super) fn cluster_unavailable(protocol: ProtocolVersion, detail: &str) -> Refusal {
        Refusal {
            cluster_unavailable: true,
            ..Refusal::connack(
                protocol,
                rc::SERVER_UNAVAILABLE,
                connack_v3::SERVER_UNAVAILABLE,
                DisconnectReason::ServerInternalError,
                &format!("cluster unavailable: {detail}"),
            )
        }
    }

    fn close(reason: DisconnectReason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            connack: None,
            detail: detail.into(),
            cluster_unavailable: false,
        }
    }
}

fn count_refusal(reason: DisconnectReason) {
    crate::metrics::connect_refused(reason.as_str());
}

/// Refuses the connection; `client` (None: not worth an event) gets its connack and
/// disconnected events.
async fn refuse(
    broker: &Broker,
    socket: &mut Socket,
    refusal: Refusal,
    client: Option<&Arc<ClientInfo>>,
) {
    if refusal.cluster_unavailable {
        let counted_as = "cluster_unavailable";
        tracing::debug!(
            client_id = client.map(|c| c.client_id.as_str()),
            reason = counted_as,
            detail = %refusal.detail,
            "connection refused"
        );
        crate::metrics::connect_refused(counted_as);
    } else {
        tracing::info!(
            client_id = client.map(|c| c.client_id.as_str()),
            peer = client.map(|c| tracing::field::display(c.peer)),
            reason = refusal.reason.as_str(),
            detail = %refusal.detail,
            "connection refused"
        );
        count_refusal(refusal.reason);
    }
    if let Some(client) = client {
        let code = refusal.connack.map(|(_, code)| code);
        raise::refused(&broker.events, client, code, refusal.reason);
    }
    if let Some((protocol, code)) = refusal.connack {
        let properties = Properties {
            reason_string: protocol.is_v5().then(|| refusal.detail.clone()),
            ..Properties::default()
        };
        let packet = Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties,
        });
        codec::encode(&packet, protocol, socket.wbuf());
    }
    // Boxed: the graceful close (a 1 KiB drain buffer, two timeouts) inline would double
    // the size of every handshake for a rare path.
    Box::pin(socket.close_gracefully(&broker.hot)).await;
}

async fn read_first(broker: &Broker, socket: &mut Socket) -> Result<Box<Connect>, Refusal> {
    let max = broker.config.max_packet_size as usize;
    loop {
        // Read before decoding, which consumes the packet even when it fails.
        let named = codec::connect_protocol(socket.rbuf());
        match codec::decode(socket.rbuf(), ProtocolVersion::V311, max) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(Packet::PingReq)) => {
                return Err(Refusal::close(
                    DisconnectReason::PingWithoutConnect,
                    "PINGREQ before CONNECT",
                ))
            }
            Ok(Some(other)) => {
                return Err(Refusal::close(
                    DisconnectReason::ProtocolError,
                    format!("{} before CONNECT", other.name()),
                ))
            }
            Ok(None) => {}
            Err(DecodeError::UnsupportedProtocolVersion(level)) => {
                let protocol = if level >= 5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                };
                return Err(Refusal::connack(
                    protocol,
                    rc::UNSUPPORTED_PROTOCOL_VERSION,
                    connack_v3::UNACCEPTABLE_PROTOCOL_VERSION,
                    DisconnectReason::ProtocolError,
                    &format!("unsupported protocol level {level}"),
                ));
            }
            Err(DecodeError::BadWill(what)) => {
                crate::metrics::packet_decode_error();
                // MQTT 5 can say why before closing (CONNACK 0x81); 3.x just closes.
                return Err(match named {
                    Some(p) if p.is_v5() => Refusal::connack(
                        p,
                        rc::MALFORMED_PACKET,
                        0,
                        DisconnectReason::BadWillMessage,
                        what,
                    ),
                    _ => Refusal::close(DisconnectReason::BadWillMessage, what),
                });
            }
            Err(e) => {
                crate::metrics::packet_decode_error();
                return Err(Refusal::close(
                    DisconnectReason::ProtocolError,
                    e.to_string(),
                ));
            }
        }
        match socket.fill(&broker.hot).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(Refusal::close(
                    DisconnectReason::TcpClosed,
                    "closed before CONNECT",
                ))
            }
            Err(e) => {
                return Err(Refusal::close(
                    DisconnectReason::TcpClosed,
                    crate::disconnect::read_failure_detail(&e),
                ))
            }
        }
    }
}

/// The checks on CONNECT that need no session (authentication is `admission.rs`'s).
fn validate(broker: &Broker, c: &Connect) -> Result<(), Refusal> {
    let p = c.protocol;
    if c.properties.authentication_method.is_some() {
        return Err(Refusal::connack(
            p,
            rc::BAD_AUTHENTICATION_METHOD,
            connack_v3::NOT_AUTHORIZED,
            DisconnectReason::NotAuthenticated,
            "enhanced authentication is not supported",
        ));
    }
    if c.client_id.len() > broker.config.max_client_id_len {
        return Err(Refusal::connack(
            p,
            rc::CLIENT_IDENTIFIER_NOT_VALID,
            connack_v3::IDENTIFIER_REJECTED,
            DisconnectReason::ClientIdTooLong,
            "client id longer than the configured limit",
        ));
    }
    if c.client_id.is_empty() && requested_expiry(c) > 0 {
        return Err(Refusal::connack(
            p,
            rc::CLIENT_IDENTIFIER_NOT_VALID,
            connack_v3::IDENTIFIER_REJECTED,
            DisconnectReason::ClientIdRequired,
            "an empty client id needs a clean session",
        ));
    }
    if let Some(will) = &c.will {
        if !topic::valid_topic_name(&will.topic) {
            return Err(match p {
                ProtocolVersion::V5 => Refusal::connack(
                    p,
                    rc::TOPIC_NAME_INVALID,
                    0,
                    DisconnectReason::BadWillMessage,
                    "invalid will topic",
                ),
                _ => Refusal::close(DisconnectReason::BadWillMessage, "invalid will topic"),
            });
        }
        if will.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&will.payload).is_err()
        {
            return Err(Refusal::connack(
                p,
                rc::PAYLOAD_FORMAT_INVALID,
                0,
                DisconnectReason::BadWillMessage,
                "will payload is not UTF-8",
            ));
        }
        if will.retain && !broker.config.retain_available {
            return Err(Refusal::connack(
                p,
                rc::RETAIN_NOT_SUPPORTED,
                0,
                DisconnectReason::BadWillMessage,
                "retain is not available",
            ));
        }
    }
    Ok(())
}

/// Session Expiry Interval as the client asked it; 3.x persistent sessions never expire.
fn requested_expiry(c: &Connect) -> u32 {
    match c.protocol {
        ProtocolVersion::V5 => c.properties.session_expiry_interval.unwrap_or(0),
        _ if c.clean_start => 0,
        _ => u32::MAX,
    }
}

/// `c` stays boxed: the 840-byte CONNECT moved into this future would be copied and
/// held across every await of the handshake.
async fn attach(
    broker: &Arc<Broker>,
    mut socket: Socket,
    id: u64,
    connect_info: Arc<ClientInfo>,
    mut c: Box<Connect>,
    certified: bool,
) -> Result<Connection, (Socket, Refusal)> {
    if let Err(r) = validate(broker, &c) {
        return Err((socket, r));
    }
    let protocol = c.protocol;
    let assigned = c.client_id.is_empty();
    if assigned {
        c.client_id = broker.assign_client_id();
    }
    // The id CONNECT carried is already allocated in the client info: share it.
    let client_id = if assigned {
        ClientId::new(&c.client_id)
    } else {
        connect_info.client_id.clone()
    };
    let info = if assigned {
        Arc::new(ClientInfo {
            client_id: client_id.clone(),
            ..(*connect_info).clone()
        })
    } else {
        connect_info
    };
    // Boxed, and only what the connection keeps comes back: the HTTP authenticator's
    // request and a token's claims inline would grow every handshake.
    let presented = admission::Presented::of(&socket, certified);
    let mut admitted = match Box::pin(admission::admit(broker, &c, &info, presented)).await {
        Ok(admitted) => admitted,
        Err(r) => return Err((socket, r)),
    };
    // After authentication (a client refused there registers nothing), before the client
    // id is claimed.
    admitted.certificate = match Box::pin(certificate_check::check(
        broker,
        socket.identity(),
        &info,
        protocol,
    ))
    .await
    {
        Ok(sn) => sn,
        Err(r) => return Err((socket, r)),
    };
    if let Some(will) = &c.will {
        let listener = admission::listener_of(&socket);
        let http = Box::pin(admission::will_decision(
            broker, &info, listener, will, &admitted,
        ))
        .await;
        if !admission::will_allowed(&mut admitted, &will.topic, http) {
            // Checked now, with the rules of the CONNECT: a will is published when the
            // client is gone, with nobody to tell.
            tracing::info!(client_id = %client_id, topic = %will.topic, "will refused by the ACL: it will not be published");
            crate::metrics::authz_denied("will");
            crate::metrics::message_dropped("not_authorized");
            c.will = None;
        }
    }
    let requested = requested_expiry(&c);
    let expiry = requested.min(broker.config.max_session_expiry_interval);

    // A session resumed from another node is in this node's index before other nodes
    // route its messages here (as the registration applies there).
    let preindexed = !c.clean_start && Box::pin(broker.preindex_resumed(&client_id, expiry)).await;
    // Committed cluster-wide before CONNACK: a connection of this client id elsewhere is
    // ended by its node as this applies there.
    let claim = Claim {
        clean_start: c.clean_start,
        expiry,
        preindexed,
    };
    // Boxed: its timer and channel inline would grow every handshake past 1000 B.
    let will = c
        .will
        .as_ref()
        .map(|w| registration::registered_will(w, &client_id));
    let registration = match Box::pin(registration::register(
        broker, &client_id, claim, will, &info,
    ))
    .await
    {
        Ok(r) => r,
        Err(detail) => return Err((socket, Refusal::cluster_unavailable(protocol, &detail))),
    };
    let kick = match broker.parker() {
        Some(parker) => KickSignal::with_parker(parker.clone()),
        None => KickSignal::new(),
    };

    let me = broker.cluster.node_id();
    // Session Present is the registry's answer: a session of this client id existed on
    // some node (with an expiry above 0) and this CONNECT did not start clean. Where it
    // was held here, the local session holds its state (queue, in-flight messages,
    // subscriptions). Where it was held by another node (or the local one was lost), the
    // local session is rebuilt from the registry's subscriptions, and its in-flight and
    // queued messages are fetched from that node before the CONNACK (see
    // `broker/handover_taker.rs`).
    let session_present = registration.session_present;
    let held_elsewhere = registration.previous.is_some_and(|p| p.node != me);

    // Look the session up until we hold the lifecycle lock of one still in the registry.
    let session = loop {
        let session = broker.get_or_create_session(&client_id);
        let Ok(guard) = tokio::time::timeout(
            LIFECYCLE_WAIT,
            session.lifecycle.lock(&broker.lifecycle_waiters),
        )
        .await
        else {
            let r = Refusal::connack(
                protocol,
                rc::SERVER_BUSY,
                connack_v3::SERVER_UNAVAILABLE,
                DisconnectReason::ServerInternalError,
                "session busy",
            );
            return Err((socket, r));
        };
        let (old_attachment, pending_will, rebuild) = {
            let mut st = session.state();
            if st.removed {
                drop(st);
                drop(guard);
                continue;
            }
            st.cancel_timers();
            st.will_due_ms = OptionalMs::NONE;
            let rebuild = session_present && (held_elsewhere || !st.is_persistent());
            (st.attachment.take(), st.will.take(), rebuild)
        };
        let present = session_present;
        if let Some(old) = old_attachment {
            tracing::info!(
                client_id = %client_id,
                new_connection = id,
                old_connection = old.connection_id,
                "taking over the session from an existing connection"
            );
            old.kick.send(Kick::TakenOver);
        }
        // The will of the previous connection goes out now, unless the session resumes
        // before its delay is over (then it is cancelled).
        if let Some(will) = pending_will {
            if will.properties.will_delay_interval.unwrap_or(0) == 0 || !present {
                broker.publish_will(&client_id, will);
            }
        }
        if !present {
            broker.clear_session(&session);
        }
        // Set aside by `preindex_resumed`, for the messages fetched from the node that
        // held the session.
        let reserved_seqs;
        {
            let mut st = session.state();
            st.protocol_level = protocol.level();
            st.expiry_interval = expiry;
            st.will = c.will.take().map(Box::new);
            st.generation = st.generation.wrapping_add(1);
            st.disconnected_at_ms = OptionalMs::NONE;
            st.moved = false;
            session.set_moving(false);
            reserved_seqs = st.reserved_seqs.take();
            st.stored_for_connect = false;
            if held_elsewhere {
                // Forwards routed before this registration were the other node's to
                // deliver (see `SessionState::came_at_index`).
                st.came_at(registration.log_index);
            } else {
                st.routed_while_prepared = None;
            }
            st.attach(
                Attachment {
                    connection_id: id,
                    kick: kick.clone(),
                    epoch: registration.epoch,
                },
                info.clone(),
            );
            if st.is_persistent() {
                broker.persist_session_locked(&session, &st);
            } else {
                // It was persistent and is not any more: a crash must not bring it back.
                broker.forget_stored_session(&session);
            }
        }
        // A registration elsewhere may have applied here between ours and the attach
        // above; its takeover found no connection with our epoch to end. Read after the
        // attach: if the registry still names us here, a later takeover finds this
        // connection attached.
        match broker.cluster.locate_client(&client_id) {
            Some(owner) if owner.node == me && owner.epoch == registration.epoch => {
                if rebuild || session_present {
                    // Boxed: the hand-over's state inline would grow every handshake.
                    Box::pin(broker.resume_attached(
                        &session,
                        &registration,
                        reserved_seqs,
                        rebuild,
                    ))
                    .await;
                }
            }
            owner => {
                // The session's messages were not fetched: whoever takes it from here is
                // told where they are.
                if let Some(p) = registration.previous.filter(|p| rebuild && p.node != me) {
                    session.state().pending_from = Some((p.node, p.epoch));
                }
                let by = owner.map_or(me, |o| o.node);
                tracing::info!(%client_id, taken_by = %by, "taken over before its CONNACK");
                if by != me {
                    broker.note_remote_taker(id, by);
                }
                kick.send(Kick::TakenOver);
            }
        }
        drop(guard);
        break session;
    };
    if let Some(sn) = admitted.certificate.take() {
        // Tracked first, then looked up: a status change applied in between is seen by
        // one or the other.
        broker.certificate_users.track(id, sn.clone(), &kick);
        if let Some(record) = broker.cluster.certificate(&sn) {
            if record.status != skein_seam::CertificateStatus::Active {
                broker.certificate_users.disable(&sn, record.status);
            }
        }
    }
    // The shutdown sweep may have run before this attachment existed.
    if broker.shutdown.is_cancelled() {
        kick.send(Kick::ShuttingDown);
    }
    if let Some(exp) = admitted.token_expiry {
        admission::expire_at(broker, &kick, exp);
    }

    let config = &broker.config;
    let mut props = Properties {
        server_keep_alive: server_keep_alive(&c, config.max_keepalive),
        ..Properties::default()
    };
    let keep_alive = props.server_keep_alive.unwrap_or(c.keep_alive);
    if protocol.is_v5() {
        if assigned {
            props.assigned_client_identifier = Some(c.client_id.clone());
        }
        if requested != expiry {
            props.session_expiry_interval = Some(expiry);
        }
        if config.max_inflight < u16::MAX {
            props.receive_maximum = Some(config.max_inflight);
        }
        props.maximum_packet_size = Some(config.max_packet_size);
        if config.max_topic_alias > 0 {
            props.topic_alias_maximum = Some(config.max_topic_alias);
        }
        if !config.retain_available {
            props.retain_available = Some(0);
        }
    }
    let connack = Packet::ConnAck(ConnAck {
        session_present,
        code: 0,
        properties: props,
    });
    codec::encode(&connack, protocol, socket.wbuf());
    raise::raise(&broker.events, &info, EventKind::ClientConnack, || {
        EventBody::Connack {
            code: 0,
            success: true,
        }
    });
    raise::raise(&broker.events, &info, EventKind::ClientConnected, || {
        EventBody::Connected
    });
    broker.hot.connect_accepted(protocol);
    broker.hot.connection_opened(protocol);
    tracing::debug!(peer = %info.peer, session_present, keep_alive, "client connected");

    let client_receive_max = c.properties.receive_maximum.unwrap_or(u16::MAX);
    Ok(Connection {
        broker: broker.clone(),
        id,
        socket,
        protocol,
        info,
        session,
        epoch: registration.epoch,
        kick_rx: kick,
        keep_alive,
        last_rx: Instant::now(),
        connect_session_expiry: requested,
        send_window: client_receive_max.min(config.max_inflight).max(1),
        client_max_packet_size: c.properties.maximum_packet_size.unwrap_or(u32::MAX),
        client_topic_alias_max: c.properties.topic_alias_maximum.unwrap_or(0),
        aliases: None,
        will_on_disconnect: false,
        problem_information: c.properties.request_problem_information != Some(0),
        acked: 0,
        holds_slot: false,
        input_order: None,
        authz: admitted.authz,
        username_verified: admitted.username_verified,
    })
}

/// The Server Keep Alive an MQTT 5 client is told when it asked for more than the cap
/// (or for none while there is a cap). A 3.x client can't be told: its own stands.
fn server_keep_alive(c: &Connect, max_keepalive: u16) -> Option<u16> {
    let asked = c.keep_alive;
    let capped = asked > max_keepalive || (asked == 0 && max_keepalive < u16::MAX);
    (c.protocol.is_v5() && capped).then_some(max_keepalive)
}

/// What events say about the client of `c` (never its password); the keep alive is the
/// one in force.
fn client_info(
    c: &Connect,
    (peer, sockname): (SocketAddr, Arc<SocketAddr>),
    transport: Transport,
    max_keepalive: u16,
) -> ClientInfo {
    ClientInfo {
        client_id: ClientId::new(&c.client_id),
        username: c.username.as_deref().map(Arc::from),
        peer,
        sockname,
        protocol: c.protocol,
        transport,
        keepalive: server_keep_alive(c, max_keepalive).unwrap_or(c.keep_alive),
        clean_start: c.clean_start,
        connected_at_ms: now_ms(),
        will: c.will.as_ref().map(|w| {
            Box::new(WillInfo {
                topic: w.topic.clone(),
                qos: w.qos,
                retain: w.retain,
                payload: w.payload.clone(),
            })
        }),
    }
}

/// Detaches a finished connection from its session (if it is still the attached one):
/// publishes or schedules the will, ends or keeps the session. `moved`: another node took
/// the session over; it lives on there (its registration is that node's, nothing to
/// release; its expiry runs there; its messages stay stored here until the owner fetches them).
pub(super) async fn detach(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    (connection_id, epoch): (u64, u64),
    close: &Close,
    will_on_disconnect: bool,
    moved: bool,
) {
    // Whether the taker resumed the session (its will then waits for nothing here: the
    // session did not end), as a takeover on this node decides.
    let resumed_elsewhere = moved
        && broker
            .cluster
            .locate_client(&session.client_id)
            .is_some_and(|o| o.node != broker.cluster.node_id() && !o.clean_start);
    let _guard = session.lifecycle.lock(&broker.lifecycle_waiters).await;
    let now = now_ms();
    let (generation, expiry, will_now, will_delay_ms) = {
        let mut st = session.state();
        if !st.is_attached_to(connection_id) {
            return;
        }
        st.attachment = None;
        st.generation = st.generation.wrapping_add(1);
        st.release_idle_memory();
        st.disconnected_at_ms = OptionalMs::at(now);
        // Marked down: the client's end (and will) are the adopting node's, not this one's.
        if (close.reason == DisconnectReason::Normal && !will_on_disconnect)
            || close.reason == DisconnectReason::NodeDown
        {
            st.will = None;
        }
        let expiry = st.expiry_interval;
        // The will goes out at the earlier of its delay and the end of the session.
        let delay_s = st
            .will
            .as_ref()
            .map(|w| w.properties.will_delay_interval.unwrap_or(0).min(expiry));
        let (will_now, will_delay_ms) = match delay_s {
            Some(_) if moved && resumed_elsewhere && expiry > 0 => {
                st.will = None;
                (None, None)
            }
            Some(_) if moved => (st.will.take(), None),
            Some(0) => (st.will.take(), None),
            Some(d) => {
                st.will_due_ms = OptionalMs::at(now + d as u64 * 1000);
                (None, Some(d as u64 * 1000))
            }
            None => (None, None),
        };
        if st.is_persistent() {
            broker.persist_session_locked(session, &st);
        }
        (st.generation, expiry, will_now, will_delay_ms)
    };
    if let Some(will) = will_now {
        broker.publish_will(&session.client_id, will);
    }
    if let Some(delay_ms) = will_delay_ms {
        broker.schedule_will(session, generation, delay_ms);
    }
    if expiry == 0 {
        broker.end_session(session, SessionEnd::ConnectionEnded(close.reason));
    } else if !moved {
        broker.schedule_expiry(session, generation, expiry, 0);
    }
    if moved {
        return;
    }
    if let Err(e) = broker
        .cluster
        .unregister_client(&session.client_id, epoch, expiry == 0)
        .await
    {
        // The registry keeps naming this node (online) until the next registration of
        // the client id, or this node's restart, releases it.
        tracing::info!(client_id = %session.client_id, error = %e, "could not release the client id in the cluster");
    }
}
