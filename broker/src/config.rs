//! Broker configuration.
//!
//! Plain data: parsing, checking and defaulting settings, nothing that acts on them. It
//! uses the vocabulary of the layers below it to type and check values (event kinds, what
//! each event dialect renders and accepts, the password file) and hands the events their
//! settings as `EventSettings` (`event_settings.rs`); everything that acts on settings sits
//! above it.
//!
//! Layers, lowest to highest precedence: built-in defaults, the TOML file named by
//! `--config` (or `SKEIN_CONFIG`), `SKEIN_<SETTING>` environment variables, command-line
//! flags. Every setting is declared once, in [`SETTINGS`]; that table drives the TOML keys,
//! the environment variable names, flag handling, error messages and the `--help` listing,
//! so those can't drift apart.
//!
//! The overlay is hand-rolled rather than using clap's `env` feature or serde
//! `deny_unknown_fields` on the whole struct: clap can't see the TOML layer, and both would
//! produce their own multi-line messages instead of one line naming the setting.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::acl::AclRules;
use crate::events::{dollar_event_dot_topics, dollar_events_slash_topics, KindSet};
use crate::jwt::JwtVerifier;
use crate::password_file::Passwords;

mod auth_settings;
mod cli;
mod cluster_settings;
mod event_settings;
mod kinds;
mod table;
#[cfg(test)]
mod tests;
mod tls;

use auth_settings::resolve_auth;
#[cfg(test)]
use cli::flag_help;
use cli::Cli;
use cluster_settings::{check_cluster, id_from_hostname, system_hostname};
pub use kinds::Secret;
use table::{env_var_name, find_setting, Raw, Setting, SETTINGS};
pub use tls::ClientCertMode;

/// Prefix of every environment variable the broker reads.
pub const ENV_PREFIX: &str = "SKEIN_";

/// Environment variable naming the TOML file when `--config` isn't given; Kubernetes
/// deployments mount the file and can't always edit the container's arguments.
pub const CONFIG_ENV: &str = "SKEIN_CONFIG";

/// Environment variable `node_id_from_hostname` reads the host name from before asking the
/// system (container runtimes and Kubernetes set it to the container's host name).
pub const HOSTNAME_ENV: &str = "HOSTNAME";

/// Exit status for configuration errors (the same one clap uses for usage errors).
pub const EXIT_CODE: i32 = 2;

/// Upper bound for millisecond timeouts. Much larger values are surely typos, and
/// `Instant + Duration` panics on overflow in code that doesn't use checked arithmetic.
const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// Fully resolved broker configuration. Field names are the TOML keys; the environment
/// variable for each is `SKEIN_` plus the uppercased name.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Numeric identity of this node, unique within a cluster.
    pub node_id: u64,
    /// Take `node_id` from the ordinal that ends the host name (`skein-2` → 3): one
    /// StatefulSet template for every pod. The host name is `HOSTNAME`, else the system's.
    pub node_id_from_hostname: bool,
    /// Human-readable node name; defaults to `skein-<node_id>` (the host name's first label
    /// with `node_id_from_hostname`).
    pub node_name: String,
    /// Directory for persistent state.
    pub data_dir: PathBuf,
    /// Free space the data directory's file system must keep; below it, publishes that
    /// need the disk are refused (a byte count, 0: off, or a percentage).
    pub storage_min_free_bytes: skein_storage::MinFree,
    /// MQTT listener address.
    pub mqtt: SocketAddr,
    /// Health/metrics HTTP listener address.
    pub http: SocketAddr,
    /// Open HTTP connections at most; more are closed at once (at least 1).
    pub http_max_connections: usize,
    /// An HTTP request's header must arrive within this many milliseconds of its first
    /// byte (of the connection's opening, for the first request).
    pub http_header_timeout_ms: u64,
    /// An HTTP connection with no request for this many milliseconds is closed; also how
    /// long a response may wait for the client to read it.
    pub http_idle_timeout_ms: u64,
    /// An HTTP request's body must arrive within this many milliseconds of its header.
    pub http_body_timeout_ms: u64,
    /// Largest HTTP request body accepted, in bytes.
    pub http_max_body_bytes: u64,
    /// The MQTT address clients and events name this node by (`node`, `nodeIp`); empty: the
    /// MQTT listener's address, or the first non-loopback interface when it listens on all.
    pub advertise_addr: String,
    /// The cluster's gRPC listener address (Raft, proposals, membership).
    pub grpc: SocketAddr,
    /// The gRPC address other members dial (`host:port`); empty: this node's `peers` entry,
    /// else the gRPC listener's address.
    pub grpc_advertise: String,
    /// The cluster's static members, `1@host:7070,2@host:7071` (this node included); empty:
    /// a cluster of one, or a node that joins through `join`.
    pub peers: String,
    /// Any member's gRPC address (`host:port`): this node joins the cluster through it.
    pub join: String,
    /// How often the Raft leader sends heartbeats, in milliseconds.
    pub raft_heartbeat_ms: u64,
    /// A follower that hears nothing from the leader for between this and twice this many
    /// milliseconds starts an election (at least twice `raft_heartbeat_ms`).
    pub raft_election_timeout_ms: u64,
    /// The Raft leader marks a member down after this many milliseconds without contact:
    /// its clients go offline (one `client.disconnected` event each, reason `node_down`)
    /// and its persistent sessions are adopted by live nodes. Above
    /// `raft_election_timeout_ms`.
    pub node_down_after_ms: u64,
    /// Messages held for one peer node (waiting to be forwarded, or sent and not
    /// acknowledged yet). A QoS 0 publisher waits for room once half are held; past the
    /// bound forwards are refused (QoS 1/2: 0x97) and counted.
    pub forward_queue_messages: usize,
    /// Maximum concurrent client connections (at least 1).
    pub max_connections: usize,
    /// Largest MQTT packet accepted, in bytes (16..=268435455).
    pub max_packet_size: u32,
    /// The server's Receive Maximum and the outgoing QoS 1/2 window per client (at least 1).
    pub max_inflight: u16,
    /// Bound on each session's offline message queue (at least 1).
    pub max_queued_messages: usize,
    /// Bound on the subscriptions one session may hold; more are refused in SUBACK.
    pub max_subscriptions_per_session: usize,
    /// Longest keep-alive granted, in seconds (at least 1); v5 clients asking for more are
    /// told the Server Keep Alive.
    pub max_keepalive: u16,
    /// A socket that sends no CONNECT within this many milliseconds is closed.
    pub connect_timeout_ms: u64,
    /// A CONNECT whose client registration has not committed through Raft within this many
    /// milliseconds is refused with Server Unavailable (no leader, no quorum).
    pub connect_commit_timeout_ms: u64,
    /// A connection with nothing to do for this many milliseconds gives up its task and
    /// waits in the shared parker until its socket, session or keepalive needs it; 0: never.
    pub park_idle_ms: u64,
    /// Threads that run connections and everything else; 0: one per CPU this process
    /// may use (its cgroup quota on Kubernetes).
    pub worker_threads: usize,
    /// Longest client identifier accepted (1..=65535).
    pub max_client_id_len: usize,
    /// The server's Topic Alias Maximum; 0 disables topic aliases.
    pub max_topic_alias: u16,
    /// Cap on the session expiry interval clients may request, in seconds.
    pub max_session_expiry_interval: u32,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// How long shutdown waits for connections to drain, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// `tracing-subscriber` `EnvFilter` directive; `RUST_LOG` takes precedence over it.
    pub log: String,
    /// Whether the `$events/...` event topics are published.
    pub events_dollar_events: bool,
    /// The canonical event kinds published on `$events/...`.
    pub events_dollar_events_kinds: KindSet,
    /// Whether the `$EVENT.*` event topics are published.
    pub events_dollar_event: bool,
    /// The canonical event kinds published on `$EVENT.*`.
    pub events_dollar_event_kinds: KindSet,
    /// Presence topic template (`{clientid}`, `{username}`, `{node}`); empty: off.
    pub events_presence_topic: String,
    /// Which of client.connected / client.disconnected publish presence messages.
    pub events_presence_kinds: KindSet,
    /// Whether presence messages are retained.
    pub events_presence_retain: bool,
    /// Bound on each event dialect's queue; what overflows is dropped and counted.
    pub events_queue_capacity: usize,
    /// Usernames that may subscribe to event topics besides clients on loopback.
    pub events_subscribe_usernames: Vec<String>,
    /// QoS of the event messages the node publishes.
    pub events_qos: u8,
    /// Bearer token the HTTP admin API (`/api/v1/...`) requires; empty: no authentication.
    pub api_token: Secret,
    /// Whether clients without a username may connect (false needs `password_file`, a JWT
    /// key or `auth_http_url`).
    pub allow_anonymous: bool,
    /// The password file (`username:sha256:<hash>:<salt>` lines); empty: none.
    pub password_file: PathBuf,
    /// The users of `password_file`, read when the configuration is loaded (not a setting).
    pub passwords: Option<Arc<Passwords>>,
    /// The ACL file (Mosquitto's format); empty: no ACL (everything allowed but the
    /// event topics' rule).
    pub acl_file: PathBuf,
    /// The rules of `acl_file`, read when the configuration is loaded (not a setting).
    pub acl: Option<Arc<AclRules>>,
    /// How often the ACL file is checked for changes, in milliseconds; 0: on SIGHUP only.
    pub acl_poll_ms: u64,
    /// HTTP authentication URL (`http://` only); empty: off.
    pub auth_http_url: String,
    /// Bound on one HTTP authentication request, in milliseconds.
    pub auth_http_timeout_ms: u64,
    /// How long an HTTP authentication answer is reused for the same credentials, in
    /// milliseconds; 0: not cached.
    pub auth_http_cache_ms: u64,
    /// HTTP authentication requests in flight at most; a CONNECT finding none free within
    /// the timeout gets the `auth_http_on_error` outcome.
    pub auth_http_concurrency: usize,
    /// The outcome when the authentication server can't be reached, times out or answers
    /// nonsense: `deny` or `allow`.
    pub auth_http_on_error: String,
    /// HTTP authorization URL (`http://` only): asked about each PUBLISH and SUBSCRIBE
    /// filter; empty: off.
    pub auth_http_acl_url: String,
    /// Bound on one HTTP authorization request, in milliseconds.
    pub auth_http_acl_timeout_ms: u64,
    /// How long an HTTP authorization answer is reused for the same request, in
    /// milliseconds; 0: not cached.
    pub auth_http_acl_cache_ms: u64,
    /// HTTP authorization requests in flight at most.
    pub auth_http_acl_concurrency: usize,
    /// The decision when the authorization server can't be reached, times out or answers
    /// nonsense: `deny`, `allow` or `ignore` (the ACL file decides).
    pub auth_http_acl_on_error: String,
    /// HMAC secret of JWT passwords (HS256/384/512); empty: none.
    pub jwt_secret: Secret,
    /// PEM public key (RSA or EC) of JWT passwords (RS256/384/512, ES256/384); empty: none.
    pub jwt_public_key_file: PathBuf,
    /// The verifier of `jwt_secret` / `jwt_public_key_file`, built when the configuration
    /// is loaded (not a setting).
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Webhook URLs (`http://` only), comma-separated; empty: the webhook is off.
    pub webhook_urls: String,
    /// Webhook rules as a JSON array (`[{"action": "on_message_publish", "topic": "foo/#"}]`);
    /// empty: every action.
    pub webhook_rules: String,
    /// Bound on one webhook request, in milliseconds.
    pub webhook_timeout_ms: u64,
    /// Retries of a webhook request after a 5xx, a timeout or a connection error.
    pub webhook_max_retries: u32,
    /// Webhook requests in flight per URL.
    pub webhook_concurrency: usize,
    /// Webhook bodies waiting per URL (and events waiting for the webhook); more are dropped.
    pub webhook_queue_capacity: usize,
    /// Whether connects/disconnects are appended to the persisted event stream.
    pub stream_enabled: bool,
    /// Which of client.connected / client.disconnected the stream (and Redis) records.
    pub stream_kinds: KindSet,
    /// Stream entries older than this many seconds are trimmed; 0: no age limit.
    pub stream_retention_secs: u64,
    /// The stream keeps at most this many entries; 0: no limit.
    pub stream_max_entries: u64,
    /// Redis to XADD stream entries to (`redis://[[user]:password@]host[:port][/db]`); empty: off.
    pub redis_url: String,
    /// The Redis stream is `<prefix>.mqtt`.
    pub redis_stream_prefix: String,
    /// XADD trims the Redis stream to about this many entries (`MAXLEN ~`); 0: no limit.
    pub redis_stream_maxlen: u64,
    /// MQTT over TLS listener address; None: off.
    pub mqtts: Option<SocketAddr>,
    /// MQTT over WebSocket listener address (path `/mqtt`); None: off.
    pub ws: Option<SocketAddr>,
    /// MQTT over secure WebSocket listener address (path `/mqtt`); None: off.
    pub wss: Option<SocketAddr>,
    /// The server's certificate chain (PEM) for `mqtts` and `wss`.
    pub tls_cert_file: PathBuf,
    /// The server's private key (PEM) for `mqtts` and `wss`.
    pub tls_key_file: PathBuf,
    /// The CAs (PEM) that client certificates must chain to; empty: none.
    pub tls_client_ca_file: PathBuf,
    /// Whether TLS clients are asked for a certificate, and whether they must have one.
    pub tls_client_cert: ClientCertMode,
    /// A TLS or WebSocket handshake must finish within this many milliseconds.
    pub tls_handshake_timeout_ms: u64,
    /// How often the certificate files are looked at for changes, in milliseconds.
    pub tls_reload_interval_ms: u64,
    /// A TLS client's username is its certificate's common name (no password checked).
    pub use_identity_as_username: bool,
    /// A TLS client's client id is its certificate's common name.
    pub use_identity_as_client_id: bool,
    /// A client certificate seen for the first time is registered active (false: pending
    /// activation, refused until an operator activates it).
    pub certificate_auto_activate: bool,
}

impl Default for Config {
    fn default() -> Self {
        const NODE_ID: u64 = 1;
        Self {
            node_id: NODE_ID,
            node_id_from_hostname: false,
            node_name: default_node_name(NODE_ID),
            data_dir: PathBuf::from("./data"),
            storage_min_free_bytes: skein_storage::MinFree::DEFAULT,
            mqtt: SocketAddr::from(([0, 0, 0, 0], 1883)),
            http: SocketAddr::from(([0, 0, 0, 0], 8080)),
            http_max_connections: 1024,
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
            http_body_timeout_ms: 30_000,
            http_max_body_bytes: 1_048_576,
            advertise_addr: String::new(),
            grpc: SocketAddr::from(([0, 0, 0, 0], 7070)),
            grpc_advertise: String::new(),
            peers: String::new(),
            join: String::new(),
            // See skein_cluster::RaftSettings: calm on a busy 2-core machine.
            raft_heartbeat_ms: 250,
            raft_election_timeout_ms: 1000,
            node_down_after_ms: 3_000,
            forward_queue_messages: 100_000,
            max_connections: 100_000,
            max_packet_size: 1_048_576,
            max_inflight: 128,
            max_queued_messages: 1000,
            max_subscriptions_per_session: 10_000,
            max_keepalive: u16::MAX,
            connect_timeout_ms: 10_000,
            connect_commit_timeout_ms: 5_000,
            park_idle_ms: 2_000,
            worker_threads: 0,
            max_client_id_len: 65_535,
            max_topic_alias: u16::MAX,
            max_session_expiry_interval: u32::MAX,
            retain_available: true,
            shutdown_timeout_ms: 5000,
            log: String::from("info,openraft=warn"),
            events_dollar_events: true,
            events_dollar_events_kinds: dollar_events_slash_topics::default_kinds(),
            events_dollar_event: false,
            events_dollar_event_kinds: dollar_event_dot_topics::renders(),
            events_presence_topic: String::new(),
            events_presence_kinds: crate::events::presence::renders(),
            events_presence_retain: true,
            events_queue_capacity: 10_000,
            events_subscribe_usernames: Vec::new(),
            events_qos: 0,
            api_token: Secret::default(),
            allow_anonymous: true,
            password_file: PathBuf::new(),
            passwords: None,
            acl_file: PathBuf::new(),
            acl: None,
            acl_poll_ms: 2000,
            auth_http_url: String::new(),
            auth_http_timeout_ms: 5000,
            auth_http_cache_ms: 60_000,
            auth_http_concurrency: 64,
            auth_http_on_error: String::from("deny"),
            auth_http_acl_url: String::new(),
            auth_http_acl_timeout_ms: 5000,
            auth_http_acl_cache_ms: 60_000,
            auth_http_acl_concurrency: 64,
            auth_http_acl_on_error: String::from("deny"),
            jwt_secret: Secret::default(),
            jwt_public_key_file: PathBuf::new(),
            jwt: None,
            webhook_urls: String::new(),
            webhook_rules: String::new(),
            webhook_timeout_ms: 5000,
            webhook_max_retries: 3,
            webhook_concurrency: 8,
            webhook_queue_capacity: 10_000,
            stream_enabled: true,
            stream_kinds: crate::events::stream::kinds(),
            stream_retention_secs: 86_400,
            stream_max_entries: 1_000_000,
            redis_url: String::new(),
            redis_stream_prefix: String::from("skein"),
            redis_stream_maxlen: 0,
            mqtts: None,
            ws: None,
            wss: None,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_client_ca_file: PathBuf::new(),
            tls_client_cert: ClientCertMode::None,
            tls_handshake_timeout_ms: 10_000,
            tls_reload_interval_ms: 2_000,
            use_identity_as_username: false,
            use_identity_as_client_id: false,
            certificate_auto_activate: true,
        }
    }
}

/// `host:port` with a non-empty host and a valid port (the host may be a DNS name).
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

fn default_node_name(node_id: u64) -> String {
    format!("skein-{node_id}")
}

impl Config {
    /// Resolves the configuration from command-line `args` (including the program name, as
    /// `std::env::args_os()` yields them), environment `env`, and the TOML file named by
    /// `--config` or `SKEIN_CONFIG`. Taking both as parameters keeps tests hermetic.
    pub fn load<I, T, E>(args: I, env: E) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
        E: IntoIterator<Item = (String, String)>,
    {
        // Parse flags first so --help and --version work even when the rest is broken.
        let cli = Cli::try_parse_from(args).map_err(ConfigError::Clap)?;
        // HOSTNAME is read for node_id_from_hostname (Kubernetes sets it to the pod name).
        let mut hostname_env = None;
        let env: HashMap<String, String> = env
            .into_iter()
            .filter_map(|(key, value)| {
                if key == HOSTNAME_ENV {
                    hostname_env = Some(value);
                    None
                } else {
                    key.starts_with(ENV_PREFIX).then_some((key, value))
                }
            })
            .collect();

        let mut config = Config::default();
        let mut node_name_given = false;
        // Where each setting was last set, for the checks made once every layer is applied.
        let mut origins: HashMap<&'static str, Origin> = HashMap::new();
        let mut apply = |config: &mut Config, setting: &Setting, raw: Raw<'_>, origin: Origin| {
            (setting.apply)(config, raw).map_err(|expected| ConfigError::Invalid {
                setting: setting.name,
                value: raw.shown(),
                expected,
                origin: origin.clone(),
            })?;
            node_name_given |= setting.name == "node_name";
            origins.insert(setting.name, origin);
            Ok::<_, ConfigError>(())
        };

        let file = cli
            .config
            .clone()
            .or_else(|| env.get(CONFIG_ENV).map(PathBuf::from));
        if let Some(path) = file {
            let table = read_toml(&path)?;
            for (key, value) in &table {
                let setting = find_setting(key).ok_or_else(|| ConfigError::UnknownKey {
                    key: key.clone(),
                    path: path.clone(),
                })?;
                apply(
                    &mut config,
                    setting,
                    Raw::Toml(value),
                    Origin::File(path.clone()),
                )?;
            }
        }
        for setting in SETTINGS {
            let var = env_var_name(setting.name);
            if let Some(value) = env.get(&var) {
                apply(&mut config, setting, Raw::Text(value), Origin::Env(var))?;
            }
        }
        for setting in SETTINGS {
            if let Some(value) = cli.flag(setting.name) {
                let flag = format!("--{}", setting.name.replace('_', "-"));
                apply(&mut config, setting, Raw::Text(value), Origin::Flag(flag))?;
            }
        }

        let hostname = if config.node_id_from_hostname {
            let hostname = hostname_env
                .filter(|name| !name.trim().is_empty())
                .unwrap_or_else(system_hostname);
            Some(id_from_hostname(&mut config, &hostname, &origins)?)
        } else {
            None
        };
        // The default name follows the *resolved* id, so `--node-id 3` alone yields skein-3.
        if !node_name_given {
            config.node_name = hostname.unwrap_or_else(|| default_node_name(config.node_id));
        }
        resolve_auth(&mut config, &origins)?;
        check_cluster(&config, &origins)?;
        tls::check(&config, &origins)?;
        Ok(config)
    }

    /// `Config::load(std::env::args_os(), std::env::vars())`, except that environment
    /// variables that aren't valid Unicode are skipped instead of panicking, or reported
    /// when they'd be one of ours.
    pub fn from_process() -> Result<Config, ConfigError> {
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            // A non-Unicode name can't be one of our settings.
            let Ok(key) = key.into_string() else { continue };
            match value.into_string() {
                Ok(value) => env.push((key, value)),
                Err(value) => {
                    let setting = SETTINGS
                        .iter()
                        .map(|s| s.name)
                        .chain(Some("config"))
                        .find(|name| env_var_name(name) == key);
                    if let Some(setting) = setting {
                        return Err(ConfigError::Invalid {
                            setting,
                            value: format!("{value:?}"),
                            expected: String::from("valid UTF-8"),
                            origin: Origin::Env(key),
                        });
                    }
                }
            }
        }
        Config::load(std::env::args_os(), env)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn connect_commit_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_commit_timeout_ms)
    }

    /// How long a connection idles before it parks (None: never).
    pub fn park_idle(&self) -> Option<Duration> {
        (self.park_idle_ms > 0).then(|| Duration::from_millis(self.park_idle_ms))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// Where a setting's value came from, so an error points at the right place to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The TOML configuration file.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
    /// A command-line flag, spelled as typed (`--node-id`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => f.write_str(&one_line(path.display())),
            Origin::Env(name) | Origin::Flag(name) => f.write_str(&one_line(name)),
        }
    }
}

/// Why the configuration couldn't be resolved. Apart from [`ConfigError::Clap`], `Display`
/// is the single line to print before exiting with [`EXIT_CODE`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help`, `--version` or a command-line usage error. Call `clap::Error::exit` (or
    /// [`ConfigError::exit`]) so clap prints it with its own formatting and exit status.
    #[error("{0}")]
    Clap(clap::Error),
    /// The configuration file couldn't be read.
    #[error("config error: config: cannot read {}: {source}", one_line(path.display()))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configuration file isn't valid TOML.
    #[error("config error: config: invalid TOML in {}: {message}", one_line(path.display()))]
    Syntax { path: PathBuf, message: String },
    /// The configuration file has a key that isn't a setting (usually a typo).
    #[error("config error: {}: unknown setting in {}", one_line(key), one_line(path.display()))]
    UnknownKey { key: String, path: PathBuf },
    /// The password file can't be read or has a bad line (named by number, never quoted:
    /// it may hold a password).
    #[error("config error: password_file: {}: {source} (from {origin})", one_line(path.display()))]
    PasswordFile {
        path: PathBuf,
        source: crate::password_file::PasswordFileError,
        origin: Origin,
    },
    /// The ACL file can't be read or has a bad line (named by number).
    #[error("config error: acl_file: {}: {source} (from {origin})", one_line(path.display()))]
    AclFile {
        path: PathBuf,
        source: crate::acl::AclFileError,
        origin: Origin,
    },
    /// The JWT public key file can't be read or holds no usable key.
    #[error("config error: jwt_public_key_file: {}: {message} (from {origin})", one_line(path.display()))]
    JwtKey {
        path: PathBuf,
        message: String,
        origin: Origin,
    },
    /// A value has the wrong type, doesn't parse, or is out of range.
    #[error("config error: {setting}: invalid value {value} (expected {expected}) from {origin}")]
    Invalid {
        setting: &'static str,
        /// The offending value, quoted or rendered so it fits on one line.
        value: String,
        expected: String,
        origin: Origin,
    },
}

impl ConfigError {
    /// The process exit status for this error: clap's for help/version/usage (0 or 2),
    /// [`EXIT_CODE`] otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Clap(e) => e.exit_code(),
            _ => EXIT_CODE,
        }
    }

    /// Prints the error the way users expect (clap's help/usage output, or the one-line
    /// message on stderr) and exits with [`ConfigError::exit_code`].
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Clap(e) => e.exit(),
            other => {
                eprintln!("{other}");
                std::process::exit(other.exit_code())
            }
        }
    }
}

/// Escapes control characters so a hostile or mistyped value can't break the one-line
/// promise of error messages.
fn one_line(value: impl fmt::Display) -> String {
    let mut out = String::new();
    for c in value.to_string().chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

fn read_toml(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|error| ConfigError::Syntax {
            path: path.to_owned(),
            message: describe_toml_error(&text, &error),
        })
}

/// toml's own `Display` draws a multi-line source snippet; we want `line L, column C: msg`.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let Some(before) = error.span().and_then(|span| text.get(..span.start)) else {
        return one_line(message);
    };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    one_line(format!("line {line}, column {column}: {message}"))
}
