//! The settings table: every setting's name, kind, help and default, as one static list
//! that flags, environment variables and the TOML file are all parsed through.

use std::net::SocketAddr;

use super::kinds::*;
use super::{is_host_port, Config, ENV_PREFIX, MAX_TIMEOUT_MS};
use crate::events::{dollar_event_dot_topics, dollar_events_slash_topics};

pub(super) fn env_var_name(setting: &str) -> String {
    format!("{ENV_PREFIX}{}", setting.to_ascii_uppercase())
}

pub(super) fn find_setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|setting| setting.name == name)
}

/// A value as it arrived: text from a flag or environment variable, or a typed TOML value.
#[derive(Clone, Copy)]
pub(super) enum Raw<'a> {
    Text(&'a str),
    Toml(&'a toml::Value),
}

impl Raw<'_> {
    pub(super) fn parse<K: Kind>(self, kind: &K) -> Option<K::Value> {
        match self {
            Raw::Text(text) => kind.parse_text(text),
            Raw::Toml(value) => kind.parse_toml(value),
        }
    }

    /// Renders the value for an error message, on one line.
    pub(super) fn shown(self) -> String {
        match self {
            Raw::Text(text) => format!("{text:?}"),
            Raw::Toml(value) => match value {
                toml::Value::String(s) => format!("{s:?}"),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Datetime(d) => d.to_string(),
                // Contents could be long or multi-line; the type is what's wrong anyway.
                toml::Value::Array(_) => String::from("[...] (an array)"),
                toml::Value::Table(_) => String::from("{...} (a table)"),
            },
        }
    }
}

/// One configurable setting. Type-erased through function pointers so all settings fit in
/// one table regardless of their Rust type.
pub(super) struct Setting {
    /// TOML key and `Config` field name.
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    /// Parses `raw` into the field; on failure returns what was expected.
    pub(super) apply: fn(&mut Config, Raw<'_>) -> Result<(), String>,
    pub(super) describe: fn() -> String,
    pub(super) default: fn() -> String,
}

/// Declares the settings table: `field: kind, "help"` with an optional
/// `default = "..."` when the default isn't a constant.
macro_rules! settings {
    ($($name:ident: $kind:expr, $help:literal $(, default = $shown:literal)?;)*) => {
        pub(super) static SETTINGS: &[Setting] = &[$(
            Setting {
                name: stringify!($name),
                help: $help,
                apply: |config, raw| {
                    let kind = $kind;
                    let value = raw.parse(&kind).ok_or_else(|| kind.describe())?;
                    config.$name = value;
                    Ok(())
                },
                describe: || $kind.describe(),
                default: || settings!(@default $name, $kind $(, $shown)?),
            },
        )*];
    };
    (@default $name:ident, $kind:expr) => {
        $kind.show(&Config::default().$name)
    };
    (@default $name:ident, $kind:expr, $shown:literal) => {
        String::from($shown)
    };
}

settings! {
    node_id: Int { min: 0, max: u64::MAX },
        "Numeric node id, unique within a cluster";
    node_id_from_hostname: Bool,
        "Take node_id from the ordinal ending the host name (HOSTNAME, else the system's): skein-2 is node 3";
    node_name: Text,
        "Human-readable node name", default = "skein-<node_id> (the host name with node_id_from_hostname)";
    data_dir: PathKind,
        "Directory for persistent state";
    storage_min_free_bytes: MinFreeKind,
        "Free space the data directory must keep: below it, publishes that need the disk are refused (QoS 1/2 to persistent sessions, retained) and /readyz answers 503";
    mqtt: Addr,
        "MQTT listener address";
    http: Addr,
        "HTTP health/metrics listener address";
    http_max_connections: Int { min: 1, max: 1_000_000 },
        "Open HTTP connections at most; more are closed at once";
    http_header_timeout_ms: Int { min: 1, max: MAX_TIMEOUT_MS },
        "Close HTTP connections whose request header takes longer than this many milliseconds";
    http_idle_timeout_ms: Int { min: 1, max: MAX_TIMEOUT_MS },
        "Close HTTP connections idle (no request, or a response not read) this many milliseconds";
    http_body_timeout_ms: Int { min: 1, max: MAX_TIMEOUT_MS },
        "Answer 408 to HTTP requests whose body takes longer than this many milliseconds";
    http_max_body_bytes: Int { min: 1, max: 268_435_455 },
        "Largest HTTP request body accepted, in bytes (413 beyond)";
    advertise_addr: Checked {
        expected: "an IP:port address",
        check: |s| s.parse::<SocketAddr>().is_ok(),
    },
        "Address events name this node by (node/nodeIp; the pod IP on Kubernetes)", default = "empty (the MQTT listener's address)";
    grpc: Addr,
        "Cluster gRPC listener address (Raft, proposals, membership)";
    grpc_advertise: Checked {
        expected: "a HOST:PORT address",
        check: is_host_port,
    },
        "gRPC address other members dial (a DNS name on Kubernetes)", default = "empty (this node's peers entry, else the gRPC listener's address)";
    peers: Checked {
        expected: "ID@HOST:PORT entries separated by commas, such as 1@host-a:7070,2@host-b:7070",
        check: |s| skein_cluster::parse_peers(s).is_ok(),
    },
        "Static cluster members, this node included; the lowest id initializes the cluster on its first start", default = "empty (a cluster of one)";
    join: Checked {
        expected: "a HOST:PORT address",
        check: is_host_port,
    },
        "Any member's gRPC address: join the cluster through it (as a learner, then a voter)", default = "empty (none)";
    raft_heartbeat_ms: Int { min: 10, max: 60_000 },
        "Raft heartbeat interval, in milliseconds";
    raft_election_timeout_ms: Int { min: 20, max: MAX_TIMEOUT_MS },
        "Raft election timeout, in milliseconds (an election starts after between this and twice this without a leader); at least twice raft_heartbeat_ms";
    node_down_after_ms: Int { min: 1, max: MAX_TIMEOUT_MS },
        "The Raft leader marks a member down after this many milliseconds without contact: its clients go offline (event reason node_down) and its persistent sessions are adopted by live nodes; above raft_election_timeout_ms";
    forward_queue_messages: Int { min: 2, max: usize::MAX },
        "Messages held per peer node for forwarding; a QoS 0 publisher waits for room once half are held, past the bound forwards are refused and counted";
    max_connections: Int { min: 1, max: usize::MAX },
        "Maximum concurrent client connections";
    max_packet_size: Int { min: 16, max: 268_435_455 },
        "Largest MQTT packet accepted, in bytes";
    max_inflight: Int { min: 1, max: u16::MAX },
        "Receive Maximum, and the outgoing QoS 1/2 window per client";
    max_queued_messages: Int { min: 1, max: usize::MAX },
        "Offline message queue bound per session";
    max_subscriptions_per_session: Int { min: 1, max: usize::MAX },
        "Subscriptions one session may hold; more are refused (SUBACK 0x97 / 0x80)";
    max_keepalive: Int { min: 1, max: u16::MAX },
        "Longest keep-alive granted, in seconds (v5 clients asking for more get Server Keep Alive)";
    connect_timeout_ms: Int { min: 1, max: MAX_TIMEOUT_MS },
        "Close sockets that send no CONNECT within this many milliseconds";
    connect_commit_timeout_ms: Int { min: 1, max: MAX_TIMEOUT_MS },
        "Refuse a CONNECT (Server Unavailable) whose client registration has not committed through Raft within this many milliseconds";
    park_idle_ms: Int { min: 0, max: MAX_TIMEOUT_MS },
        "Park connections idle this many milliseconds (no task until input, a message or keepalive); 0: never";
    worker_threads: Int { min: 0, max: 1024 },
        "Runtime worker threads; 0: one per CPU available to the process";
    max_client_id_len: Int { min: 1, max: 65_535 },
        "Longest client identifier accepted";
    max_topic_alias: Int { min: 0, max: u16::MAX },
        "Topic Alias Maximum offered to clients (0 disables aliases)";
    max_session_expiry_interval: Int { min: 0, max: u32::MAX },
        "Cap on the session expiry interval clients may request, in seconds";
    retain_available: Bool,
        "Whether retained messages are supported";
    shutdown_timeout_ms: Int { min: 0, max: MAX_TIMEOUT_MS },
        "How long shutdown waits for connections to drain, in milliseconds";
    log: Filter,
        "Log filter (tracing EnvFilter syntax); RUST_LOG takes precedence";
    events_dollar_events: Bool,
        "Publish the $events/... event topics (client_connected, client_disconnected, session_subscribed, session_unsubscribed)";
    events_dollar_events_kinds: EventKinds { renders: dollar_events_slash_topics::renders() },
        "Canonical event kinds published on $events/...";
    events_dollar_event: Bool,
        "Publish the $EVENT.* event topics (CONNECT, CLOSE, PUBLISH, ...)";
    events_dollar_event_kinds: EventKinds { renders: dollar_event_dot_topics::renders() },
        "Canonical event kinds published on $EVENT.*";
    events_presence_topic: TopicTemplate,
        "Presence topic template with {clientid}, {username}, {node}: gets {\"online\": true|false}", default = "empty (off)";
    events_presence_kinds: EventKinds { renders: crate::events::presence::renders() },
        "Which of client.connected, client.disconnected publish presence messages";
    events_presence_retain: Bool,
        "Whether presence messages are retained";
    events_queue_capacity: Int { min: 1, max: 10_000_000 },
        "Bound on each event dialect's queue; what overflows is dropped and counted";
    events_subscribe_usernames: Names,
        "Usernames allowed to subscribe to $events/# and $EVENT.* besides loopback clients", default = "none";
    events_qos: Int { min: 0, max: 2 },
        "QoS of the event messages the node publishes";
    api_token: SecretKind,
        "Bearer token required by the HTTP admin API (/api/v1)", default = "empty (no authentication)";
    allow_anonymous: Bool,
        "Whether clients without a username may connect (false needs password_file, jwt_secret, jwt_public_key_file or auth_http_url)";
    password_file: OptionalPath,
        "Password file: one username:sha256:<hash>:<salt> (or username:plain:<password>) line per user", default = "empty (none)";
    acl_file: OptionalPath,
        "ACL file in Mosquitto's format (user, topic [read|write|readwrite|deny] FILTER, pattern with %c/%u); reloaded on change and on SIGHUP", default = "empty (none)";
    acl_poll_ms: Int { min: 0, max: MAX_TIMEOUT_MS },
        "How often the ACL file is checked for changes, in milliseconds (0: on SIGHUP only)";
    auth_http_url: Checked {
        expected: "one http:// URL",
        check: |s| crate::events::webhook::parse_urls(s).is_ok_and(|u| u.len() <= 1),
    },
        "HTTP authentication: POST each CONNECT's credentials (JSON) here; the answer allows, denies or marks a superuser", default = "empty (off)";
    auth_http_timeout_ms: Int { min: 1, max: MAX_TIMEOUT_MS },
        "Bound on one HTTP authentication request, in milliseconds (then auth_http_on_error)";
    auth_http_cache_ms: Int { min: 0, max: MAX_TIMEOUT_MS },
        "How long an HTTP authentication answer is reused for the same credentials, in milliseconds (0: not cached)";
    auth_http_concurrency: Int { min: 1, max: 100_000 },
        "HTTP authentication requests in flight at most; CONNECTs beyond wait (within the timeout)";
    auth_http_on_error: Checked {
        expected: "deny or allow",
        check: |s| s == "deny" || s == "allow",
    },
        "Outcome of a CONNECT whose authentication server is unreachable, times out or answers nonsense: deny or allow";
    auth_http_acl_url: Checked {
        expected: "one http:// URL",
        check: |s| crate::events::webhook::parse_urls(s).is_ok_and(|u| u.len() <= 1),
    },
        "HTTP authorization: POST each PUBLISH and SUBSCRIBE filter (JSON) here; the answer allows, denies or leaves it to the ACL file (ignore)", default = "empty (off)";
    auth_http_acl_timeout_ms: Int { min: 1, max: MAX_TIMEOUT_MS },
        "Bound on one HTTP authorization request, in milliseconds (then auth_http_acl_on_error)";
    auth_http_acl_cache_ms: Int { min: 0, max: MAX_TIMEOUT_MS },
        "How long an HTTP authorization answer is reused for the same request, in milliseconds (0: not cached)";
    auth_http_acl_concurrency: Int { min: 1, max: 100_000 },
        "HTTP authorization requests in flight at most; packets beyond wait (within the timeout)";
    auth_http_acl_on_error: Checked {
        expected: "deny, allow or ignore",
        check: |s| s == "deny" || s == "allow" || s == "ignore",
    },
        "Decision on a PUBLISH or SUBSCRIBE whose authorization server is unreachable, times out or answers nonsense: deny, allow or ignore (the ACL file decides)";
    jwt_secret: SecretKind,
        "HMAC secret of JWT passwords (HS256/384/512)", default = "empty (none)";
    jwt_public_key_file: OptionalPath,
        "PEM public key of JWT passwords: RSA (RS256/384/512) or EC (ES256/384)", default = "empty (none)";
    webhook_urls: Checked {
        expected: "comma-separated http:// URLs",
        check: |s| crate::events::webhook::parse_urls(s).is_ok(),
    },
        "Webhook URLs, comma-separated (http:// only)", default = "empty (off)";
    webhook_rules: Checked {
        expected: "a JSON array of rules such as [{\"action\": \"on_message_publish\", \"topic\": \"foo/#\"}]",
        check: |s| crate::events::webhook::rules::Rules::parse(s).is_ok(),
    },
        "Webhook rules: which actions are posted, for which topics", default = "empty (every action)";
    webhook_timeout_ms: Int { min: 1, max: MAX_TIMEOUT_MS },
        "Bound on one webhook request, in milliseconds";
    webhook_max_retries: Int { min: 0, max: 100 },
        "Retries of a webhook request after a 5xx, a timeout or a connection error";
    webhook_concurrency: Int { min: 1, max: 1024 },
        "Webhook requests in flight per URL";
    webhook_queue_capacity: Int { min: 1, max: 10_000_000 },
        "Webhook bodies waiting per URL; what overflows is dropped and counted";
    stream_enabled: Bool,
        "Append connects/disconnects to the persisted event stream (GET /api/v1/events)";
    stream_kinds: EventKinds { renders: crate::events::stream::kinds() },
        "Which of client.connected, client.disconnected the stream and Redis record";
    stream_retention_secs: Int { min: 0, max: 315_360_000 },
        "Trim event stream entries older than this many seconds (0: no age limit)";
    stream_max_entries: Int { min: 0, max: u64::MAX },
        "Most entries the event stream keeps (0: no limit)";
    redis_url: Checked {
        expected: "a redis://[[user]:password@]host[:port][/db] URL",
        check: |s| crate::events::redis::parse_url(s).is_ok(),
    },
        "Redis to XADD event stream entries to", default = "empty (off)";
    redis_stream_prefix: Text,
        "Redis stream name prefix: entries go to <prefix>.mqtt";
    redis_stream_maxlen: Int { min: 0, max: u64::MAX },
        "Trim the Redis stream to about this many entries on every XADD (MAXLEN ~; 0: no limit)";
    mqtts: OptionalAddr,
        "MQTT over TLS listener address (needs tls_cert_file and tls_key_file)", default = "empty (off)";
    ws: OptionalAddr,
        "MQTT over WebSocket listener address (path /mqtt, subprotocol mqtt or mqttv3.1)", default = "empty (off)";
    wss: OptionalAddr,
        "MQTT over secure WebSocket listener address (path /mqtt; the TLS settings of mqtts)", default = "empty (off)";
    tls_cert_file: OptionalPath,
        "Server certificate chain (PEM) for mqtts and wss; reloaded when it changes or on SIGHUP", default = "empty (none)";
    tls_key_file: OptionalPath,
        "Server private key (PEM: PKCS#8, PKCS#1 or SEC1) for mqtts and wss; reloaded with the certificate", default = "empty (none)";
    tls_client_ca_file: OptionalPath,
        "CA certificates (PEM) client certificates must chain to (needed unless tls_client_cert is none)", default = "empty (none)";
    tls_client_cert: ClientCertKind,
        "Client certificates on mqtts and wss: none (not asked for), optional (verified if sent) or required";
    tls_handshake_timeout_ms: Int { min: 1, max: MAX_TIMEOUT_MS },
        "Close TLS and WebSocket connections whose handshake takes longer than this many milliseconds";
    tls_reload_interval_ms: Int { min: 100, max: MAX_TIMEOUT_MS },
        "How often the certificate, key and CA files are checked for changes, in milliseconds";
    use_identity_as_username: Bool,
        "A TLS client's username is its certificate's common name, and no password is checked (Mosquitto's option); a TLS client without one is refused";
    use_identity_as_client_id: Bool,
        "A TLS client's client id is its certificate's common name; a TLS client without one is refused";
    certificate_auto_activate: Bool,
        "A client certificate seen for the first time is registered active (false: pending_activation, refused until activated through the admin API)";
}
