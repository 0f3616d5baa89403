//! Broker configuration.
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

use crate::auth::Passwords;
use crate::events::{dollar_event, dollar_events, EventKind, KindSet};

/// Prefix of every environment variable the broker reads.
pub const ENV_PREFIX: &str = "SKEIN_";

/// Environment variable naming the TOML file when `--config` isn't given; Kubernetes
/// deployments mount the file and can't always edit the container's arguments.
pub const CONFIG_ENV: &str = "SKEIN_CONFIG";

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
    /// Human-readable node name; defaults to `skein-<node_id>`.
    pub node_name: String,
    /// Directory for persistent state.
    pub data_dir: PathBuf,
    /// MQTT listener address.
    pub mqtt: SocketAddr,
    /// Health/metrics HTTP listener address.
    pub http: SocketAddr,
    /// The MQTT address clients and events name this node by (`node`, `nodeIp`); empty: the
    /// MQTT listener's address, or the first non-loopback interface when it listens on all.
    pub advertise_addr: String,
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
    /// Whether clients without a username may connect (false needs `password_file`).
    pub allow_anonymous: bool,
    /// The password file (`username:sha256:<hash>:<salt>` lines); empty: none.
    pub password_file: PathBuf,
    /// The users of `password_file`, read when the configuration is loaded (not a setting).
    pub passwords: Option<Arc<Passwords>>,
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
    /// Stream entries older than this many seconds are trimmed; 0: no age limit.
    pub stream_retention_secs: u64,
    /// The stream keeps at most this many entries; 0: no limit.
    pub stream_max_entries: u64,
    /// Redis to XADD stream entries to (`redis://[[user]:password@]host[:port][/db]`); empty: off.
    pub redis_url: String,
    /// The Redis stream is `<prefix>.mqtt`.
    pub redis_stream_prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        const NODE_ID: u64 = 1;
        Self {
            node_id: NODE_ID,
            node_name: default_node_name(NODE_ID),
            data_dir: PathBuf::from("./data"),
            mqtt: SocketAddr::from(([0, 0, 0, 0], 1883)),
            http: SocketAddr::from(([0, 0, 0, 0], 8080)),
            advertise_addr: String::new(),
            max_connections: 100_000,
            max_packet_size: 1_048_576,
            max_inflight: 128,
            max_queued_messages: 1000,
            max_subscriptions_per_session: 10_000,
            max_keepalive: u16::MAX,
            connect_timeout_ms: 10_000,
            max_client_id_len: 65_535,
            max_topic_alias: u16::MAX,
            max_session_expiry_interval: u32::MAX,
            retain_available: true,
            shutdown_timeout_ms: 5000,
            log: String::from("info"),
            events_dollar_events: true,
            events_dollar_events_kinds: dollar_events::renders(),
            events_dollar_event: false,
            events_dollar_event_kinds: dollar_event::renders(),
            events_presence_topic: String::new(),
            events_presence_retain: true,
            events_queue_capacity: 10_000,
            events_subscribe_usernames: Vec::new(),
            events_qos: 0,
            api_token: Secret::default(),
            allow_anonymous: true,
            password_file: PathBuf::new(),
            passwords: None,
            webhook_urls: String::new(),
            webhook_rules: String::new(),
            webhook_timeout_ms: 5000,
            webhook_max_retries: 3,
            webhook_concurrency: 8,
            webhook_queue_capacity: 10_000,
            stream_enabled: true,
            stream_retention_secs: 86_400,
            stream_max_entries: 1_000_000,
            redis_url: String::new(),
            redis_stream_prefix: String::from("skein"),
        }
    }
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
        let env: HashMap<String, String> = env
            .into_iter()
            .filter(|(key, _)| key.starts_with(ENV_PREFIX))
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

        // The default name follows the *resolved* id, so `--node-id 3` alone yields skein-3.
        if !node_name_given {
            config.node_name = default_node_name(config.node_id);
        }
        resolve_auth(&mut config, &origins)?;
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
        source: crate::auth::PasswordFileError,
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

/// Reads the password file now, so a bad one stops the node at startup with a
/// configuration error; refuses `allow_anonymous = false` without one (nobody could
/// connect).
fn resolve_auth(
    config: &mut Config,
    origins: &HashMap<&'static str, Origin>,
) -> Result<(), ConfigError> {
    config.passwords = None;
    match origins.get("password_file") {
        Some(origin) if !config.password_file.as_os_str().is_empty() => {
            let passwords = Passwords::load(&config.password_file).map_err(|source| {
                ConfigError::PasswordFile {
                    path: config.password_file.clone(),
                    source,
                    origin: origin.clone(),
                }
            })?;
            config.passwords = Some(Arc::new(passwords));
        }
        _ => {
            if let (false, Some(origin)) = (config.allow_anonymous, origins.get("allow_anonymous"))
            {
                return Err(ConfigError::Invalid {
                    setting: "allow_anonymous",
                    value: String::from("false"),
                    expected: String::from("true when no password_file is set"),
                    origin: origin.clone(),
                });
            }
        }
    }
    Ok(())
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

/// The command line. Setting flags are taken as strings and parsed through [`SETTINGS`], so
/// a bad `--mqtt` gets the same one-line message as a bad `SKEIN_MQTT`.
#[derive(Debug, Parser)]
#[command(
    name = "skein",
    version,
    about = "Skein MQTT broker",
    after_help = format!("{} Run with --help for the full list of settings.", overview()),
    after_long_help = format!("{}\n\n{}", overview(), settings_help()),
)]
struct Cli {
    /// TOML configuration file (also SKEIN_CONFIG).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "ID", help = flag_help("node_id"))]
    node_id: Option<String>,
    #[arg(long, value_name = "NAME", help = flag_help("node_name"))]
    node_name: Option<String>,
    #[arg(long, value_name = "DIR", help = flag_help("data_dir"))]
    data_dir: Option<String>,
    #[arg(long, value_name = "ADDR", help = flag_help("mqtt"))]
    mqtt: Option<String>,
    #[arg(long, value_name = "ADDR", help = flag_help("http"))]
    http: Option<String>,
}

impl Cli {
    /// The flag's value for a setting, if that setting has a flag and it was given.
    fn flag(&self, setting: &str) -> Option<&str> {
        let value = match setting {
            "node_id" => &self.node_id,
            "node_name" => &self.node_name,
            "data_dir" => &self.data_dir,
            "mqtt" => &self.mqtt,
            "http" => &self.http,
            _ => return None,
        };
        value.as_deref()
    }
}

fn overview() -> String {
    format!(
        "Every setting can also be given as a key in the TOML file named by --config (or \
         {CONFIG_ENV}) and as the environment variable {ENV_PREFIX}<SETTING>, e.g. \
         SKEIN_MAX_KEEPALIVE=60. Precedence: flag > environment > file > default."
    )
}

fn flag_help(name: &str) -> String {
    match find_setting(name) {
        Some(setting) => format!(
            "{} [default: {}] [env: {}]",
            setting.help,
            (setting.default)(),
            env_var_name(setting.name)
        ),
        None => String::new(),
    }
}

fn settings_help() -> String {
    let mut out = String::from("Settings (TOML key, environment variable):");
    for setting in SETTINGS {
        out.push_str(&format!(
            "\n  {}, {}\n          {}. Expected {}; default {}.",
            setting.name,
            env_var_name(setting.name),
            setting.help,
            (setting.describe)(),
            (setting.default)(),
        ));
    }
    out
}

fn env_var_name(setting: &str) -> String {
    format!("{ENV_PREFIX}{}", setting.to_ascii_uppercase())
}

fn find_setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|setting| setting.name == name)
}

/// A value as it arrived: text from a flag or environment variable, or a typed TOML value.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Text(&'a str),
    Toml(&'a toml::Value),
}

impl Raw<'_> {
    fn parse<K: Kind>(self, kind: &K) -> Option<K::Value> {
        match self {
            Raw::Text(text) => kind.parse_text(text),
            Raw::Toml(value) => kind.parse_toml(value),
        }
    }

    /// Renders the value for an error message, on one line.
    fn shown(self) -> String {
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

/// How one type of setting is parsed, validated and described.
trait Kind {
    type Value;
    /// What a valid value looks like, for error messages and help.
    fn describe(&self) -> String;
    fn parse_text(&self, text: &str) -> Option<Self::Value>;
    fn parse_toml(&self, value: &toml::Value) -> Option<Self::Value>;
    fn show(&self, value: &Self::Value) -> String;
}

/// An integer within `min..=max`.
struct Int<T> {
    min: T,
    max: T,
}

impl<T> Kind for Int<T>
where
    T: Copy + PartialOrd + fmt::Display + FromStr + TryFrom<i64>,
{
    type Value = T;
    fn describe(&self) -> String {
        format!("an integer {}..={}", self.min, self.max)
    }
    fn parse_text(&self, text: &str) -> Option<T> {
        let value = text.trim().parse().ok()?;
        (self.min..=self.max).contains(&value).then_some(value)
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<T> {
        let value = T::try_from(value.as_integer()?).ok()?;
        (self.min..=self.max).contains(&value).then_some(value)
    }
    fn show(&self, value: &T) -> String {
        value.to_string()
    }
}

struct Bool;

impl Kind for Bool {
    type Value = bool;
    fn describe(&self) -> String {
        String::from("true, false, 1 or 0")
    }
    fn parse_text(&self, text: &str) -> Option<bool> {
        match text.trim() {
            t if t.eq_ignore_ascii_case("true") || t == "1" => Some(true),
            t if t.eq_ignore_ascii_case("false") || t == "0" => Some(false),
            _ => None,
        }
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<bool> {
        // 1/0 are accepted in TOML too so the advertised forms are the same everywhere.
        match value {
            toml::Value::Boolean(b) => Some(*b),
            toml::Value::Integer(1) => Some(true),
            toml::Value::Integer(0) => Some(false),
            _ => None,
        }
    }
    fn show(&self, value: &bool) -> String {
        value.to_string()
    }
}

/// A non-empty string.
struct Text;

impl Kind for Text {
    type Value = String;
    fn describe(&self) -> String {
        String::from("a non-empty string")
    }
    fn parse_text(&self, text: &str) -> Option<String> {
        (!text.is_empty()).then(|| text.to_owned())
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<String> {
        self.parse_text(value.as_str()?)
    }
    fn show(&self, value: &String) -> String {
        value.clone()
    }
}

/// A value that must not show up in logs or `Debug` output (the admin API token).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: only for comparing with what a client presents.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(***)"
        })
    }
}

/// Any string, empty included (empty switches the feature off). Surrounding whitespace is
/// dropped: secrets often come from files that end with a newline.
struct SecretKind;

impl Kind for SecretKind {
    type Value = Secret;
    fn describe(&self) -> String {
        String::from("a string (empty disables it)")
    }
    fn parse_text(&self, text: &str) -> Option<Secret> {
        Some(Secret::new(text.trim()))
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<Secret> {
        self.parse_text(value.as_str()?)
    }
    fn show(&self, value: &Secret) -> String {
        format!("{value:?}")
    }
}

/// A string that `check` accepts; empty is always accepted (it switches the feature off).
struct Checked {
    expected: &'static str,
    check: fn(&str) -> bool,
}

impl Kind for Checked {
    type Value = String;
    fn describe(&self) -> String {
        String::from(self.expected)
    }
    fn parse_text(&self, text: &str) -> Option<String> {
        let text = text.trim();
        (text.is_empty() || (self.check)(text)).then(|| text.to_owned())
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<String> {
        self.parse_text(value.as_str()?)
    }
    fn show(&self, value: &String) -> String {
        value.clone()
    }
}

/// A non-empty filesystem path.
struct PathKind;

impl Kind for PathKind {
    type Value = PathBuf;
    fn describe(&self) -> String {
        String::from("a non-empty path")
    }
    fn parse_text(&self, text: &str) -> Option<PathBuf> {
        (!text.is_empty()).then(|| PathBuf::from(text))
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<PathBuf> {
        self.parse_text(value.as_str()?)
    }
    fn show(&self, value: &PathBuf) -> String {
        value.display().to_string()
    }
}

/// A filesystem path, or empty for none.
struct OptionalPath;

impl Kind for OptionalPath {
    type Value = PathBuf;
    fn describe(&self) -> String {
        String::from("a path (empty: none)")
    }
    fn parse_text(&self, text: &str) -> Option<PathBuf> {
        Some(PathBuf::from(text.trim()))
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<PathBuf> {
        self.parse_text(value.as_str()?)
    }
    fn show(&self, value: &PathBuf) -> String {
        value.display().to_string()
    }
}

/// A comma-separated list of canonical event kinds (`client.connected,session.subscribed`),
/// or a TOML array of them; each must be one the dialect renders. Empty: none.
struct EventKinds {
    renders: KindSet,
}

impl Kind for EventKinds {
    type Value = KindSet;
    fn describe(&self) -> String {
        format!(
            "a comma-separated list of event kinds out of {}",
            self.show(&self.renders)
        )
    }
    fn parse_text(&self, text: &str) -> Option<KindSet> {
        self.parse_names(text.split(','))
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<KindSet> {
        match value {
            toml::Value::String(s) => self.parse_text(s),
            toml::Value::Array(a) => {
                let names: Option<Vec<&str>> = a.iter().map(toml::Value::as_str).collect();
                self.parse_names(names?.into_iter())
            }
            _ => None,
        }
    }
    fn show(&self, value: &KindSet) -> String {
        let names: Vec<&str> = EventKind::ALL
            .into_iter()
            .filter(|k| value.contains(*k))
            .map(EventKind::as_str)
            .collect();
        names.join(",")
    }
}

impl EventKinds {
    fn parse_names<'a>(&self, names: impl Iterator<Item = &'a str>) -> Option<KindSet> {
        let mut set = KindSet::NONE;
        for name in names.map(str::trim).filter(|n| !n.is_empty()) {
            let kind = EventKind::parse(name).filter(|k| self.renders.contains(*k))?;
            set = set.union(KindSet::of(&[kind]));
        }
        Some(set)
    }
}

/// A comma-separated list of names (or a TOML array of strings); empty entries are dropped.
struct Names;

impl Kind for Names {
    type Value = Vec<String>;
    fn describe(&self) -> String {
        String::from("a comma-separated list of names")
    }
    fn parse_text(&self, text: &str) -> Option<Vec<String>> {
        Some(
            text.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<Vec<String>> {
        match value {
            toml::Value::String(s) => self.parse_text(s),
            toml::Value::Array(a) => {
                let mut names = Vec::new();
                for v in a {
                    let name = v.as_str()?.trim();
                    if !name.is_empty() {
                        names.push(name.to_owned());
                    }
                }
                Some(names)
            }
            _ => None,
        }
    }
    fn show(&self, value: &Vec<String>) -> String {
        value.join(",")
    }
}

/// A presence topic template, or empty for off.
struct TopicTemplate;

impl Kind for TopicTemplate {
    type Value = String;
    fn describe(&self) -> String {
        String::from(
            "empty, or a topic name with the placeholders {clientid}, {username}, {node} and no wildcards",
        )
    }
    fn parse_text(&self, text: &str) -> Option<String> {
        let text = text.trim();
        let valid = text.is_empty() || crate::events::presence::Template::parse(text).is_ok();
        valid.then(|| text.to_owned())
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<String> {
        self.parse_text(value.as_str()?)
    }
    fn show(&self, value: &String) -> String {
        value.clone()
    }
}

/// An `IP:port` socket address (no host names: resolving them would make loading
/// configuration depend on DNS).
struct Addr;

impl Kind for Addr {
    type Value = SocketAddr;
    fn describe(&self) -> String {
        String::from("an IP:port socket address such as 0.0.0.0:1883 or [::]:1883")
    }
    fn parse_text(&self, text: &str) -> Option<SocketAddr> {
        text.trim().parse().ok()
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<SocketAddr> {
        self.parse_text(value.as_str()?)
    }
    fn show(&self, value: &SocketAddr) -> String {
        value.to_string()
    }
}

/// A `tracing-subscriber` `EnvFilter` directive, checked here so a typo is a config error
/// rather than a silently different log level.
struct Filter;

impl Kind for Filter {
    type Value = String;
    fn describe(&self) -> String {
        String::from("a tracing filter directive such as info or skein_broker=debug,warn")
    }
    fn parse_text(&self, text: &str) -> Option<String> {
        let text = text.trim();
        let valid =
            !text.is_empty() && tracing_subscriber::EnvFilter::builder().parse(text).is_ok();
        valid.then(|| text.to_owned())
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<String> {
        self.parse_text(value.as_str()?)
    }
    fn show(&self, value: &String) -> String {
        value.clone()
    }
}

/// One configurable setting. Type-erased through function pointers so all settings fit in
/// one table regardless of their Rust type.
struct Setting {
    /// TOML key and `Config` field name.
    name: &'static str,
    help: &'static str,
    /// Parses `raw` into the field; on failure returns what was expected.
    apply: fn(&mut Config, Raw<'_>) -> Result<(), String>,
    describe: fn() -> String,
    default: fn() -> String,
}

/// Declares the settings table: `field: kind, "help"` with an optional
/// `default = "..."` when the default isn't a constant.
macro_rules! settings {
    ($($name:ident: $kind:expr, $help:literal $(, default = $shown:literal)?;)*) => {
        static SETTINGS: &[Setting] = &[$(
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
    node_name: Text,
        "Human-readable node name", default = "skein-<node_id>";
    data_dir: PathKind,
        "Directory for persistent state";
    mqtt: Addr,
        "MQTT listener address";
    http: Addr,
        "HTTP health/metrics listener address";
    advertise_addr: Checked {
        expected: "an IP:port address",
        check: |s| s.parse::<SocketAddr>().is_ok(),
    },
        "Address events name this node by (node/nodeIp; the pod IP on Kubernetes)", default = "empty (the MQTT listener's address)";
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
    events_dollar_events_kinds: EventKinds { renders: dollar_events::renders() },
        "Canonical event kinds published on $events/...";
    events_dollar_event: Bool,
        "Publish the $EVENT.* event topics (CONNECT, CLOSE, PUBLISH, ...)";
    events_dollar_event_kinds: EventKinds { renders: dollar_event::renders() },
        "Canonical event kinds published on $EVENT.*";
    events_presence_topic: TopicTemplate,
        "Presence topic template with {clientid}, {username}, {node}: gets {\"online\": true|false}", default = "empty (off)";
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
        "Whether clients without a username may connect (false needs password_file)";
    password_file: OptionalPath,
        "Password file: one username:sha256:<hash>:<salt> (or username:plain:<password>) line per user", default = "empty (none)";
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::io::Write;

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args = std::iter::once("skein").chain(args.iter().copied());
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load(args, env)
    }

    fn toml_file(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(contents.as_bytes())
            .expect("write temp file");
        file
    }

    fn path_of(file: &tempfile::NamedTempFile) -> &str {
        file.path().to_str().expect("utf-8 temp path")
    }

    /// Loads expecting failure and checks the one-line shape every error must have.
    fn error(args: &[&str], env: &[(&str, &str)], setting: &str) -> String {
        let err = load(args, env).expect_err("expected a config error");
        assert_eq!(err.exit_code(), EXIT_CODE);
        let message = err.to_string();
        assert!(!message.contains('\n'), "multi-line message: {message:?}");
        let prefix = format!("config error: {setting}: ");
        assert!(
            message.starts_with(&prefix),
            "{message:?} should start with {prefix:?}"
        );
        message
    }

    #[test]
    fn defaults() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.node_id, 1);
        assert_eq!(config.node_name, "skein-1");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.mqtt, "0.0.0.0:1883".parse().unwrap());
        assert_eq!(config.http, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.max_connections, 100_000);
        assert_eq!(config.max_packet_size, 1_048_576);
        assert_eq!(config.max_inflight, 128);
        assert_eq!(config.max_queued_messages, 1000);
        assert_eq!(config.max_keepalive, 65_535);
        assert_eq!(config.max_client_id_len, 65_535);
        assert_eq!(config.max_topic_alias, 65_535);
        assert_eq!(config.max_session_expiry_interval, u32::MAX);
        assert!(config.retain_available);
        assert_eq!(config.log, "info");
        assert_eq!(config.connect_timeout(), Duration::from_secs(10));
        assert_eq!(config.shutdown_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn toml_file_sets_everything() {
        let file = toml_file(
            r#"
            node_id = 7
            node_name = "edge-a"
            data_dir = "/var/lib/skein"
            mqtt = "127.0.0.1:1884"
            http = "[::1]:9090"
            advertise_addr = "192.0.2.7:1883"
            max_connections = 50
            max_packet_size = 4096
            max_inflight = 10
            max_queued_messages = 20
            max_keepalive = 300
            connect_timeout_ms = 2500
            max_client_id_len = 23
            max_topic_alias = 0
            max_session_expiry_interval = 3600
            retain_available = false
            shutdown_timeout_ms = 0
            log = "skein_broker=debug,warn"
            webhook_urls = "http://127.0.0.1:9000/hook"
            webhook_rules = '[{"action": "on_client_connected"}]'
            webhook_timeout_ms = 100
            webhook_max_retries = 0
            webhook_concurrency = 2
            webhook_queue_capacity = 5
            stream_enabled = false
            stream_retention_secs = 60
            stream_max_entries = 10
            redis_url = "redis://127.0.0.1:6390"
            redis_stream_prefix = "supermq"
            events_dollar_events = false
            events_dollar_events_kinds = ["client.connected", "session.subscribed"]
            events_dollar_event = true
            events_dollar_event_kinds = "client.connect, message.publish"
            events_presence_topic = "open/KEY/{username}/online"
            events_presence_retain = false
            events_queue_capacity = 5
            events_subscribe_usernames = ["ops", "audit"]
            events_qos = 1
            api_token = "t0k"
            "#,
        );
        let config = load(&["--config", path_of(&file)], &[]).unwrap();
        assert_eq!(
            config,
            Config {
                node_id: 7,
                node_name: "edge-a".into(),
                data_dir: "/var/lib/skein".into(),
                mqtt: "127.0.0.1:1884".parse().unwrap(),
                http: "[::1]:9090".parse().unwrap(),
                advertise_addr: "192.0.2.7:1883".into(),
                max_connections: 50,
                max_packet_size: 4096,
                max_inflight: 10,
                max_queued_messages: 20,
                max_subscriptions_per_session: 10_000,
                max_keepalive: 300,
                connect_timeout_ms: 2500,
                max_client_id_len: 23,
                max_topic_alias: 0,
                max_session_expiry_interval: 3600,
                retain_available: false,
                shutdown_timeout_ms: 0,
                log: "skein_broker=debug,warn".into(),
                webhook_urls: "http://127.0.0.1:9000/hook".into(),
                webhook_rules: r#"[{"action": "on_client_connected"}]"#.into(),
                webhook_timeout_ms: 100,
                webhook_max_retries: 0,
                webhook_concurrency: 2,
                webhook_queue_capacity: 5,
                stream_enabled: false,
                stream_retention_secs: 60,
                stream_max_entries: 10,
                redis_url: "redis://127.0.0.1:6390".into(),
                redis_stream_prefix: "supermq".into(),
                events_dollar_events: false,
                events_dollar_events_kinds: KindSet::of(&[
                    EventKind::ClientConnected,
                    EventKind::SessionSubscribed
                ]),
                events_dollar_event: true,
                events_dollar_event_kinds: KindSet::of(&[
                    EventKind::ClientConnect,
                    EventKind::MessagePublish
                ]),
                events_presence_topic: "open/KEY/{username}/online".into(),
                events_presence_retain: false,
                events_queue_capacity: 5,
                events_subscribe_usernames: vec!["ops".into(), "audit".into()],
                events_qos: 1,
                api_token: Secret::new("t0k"),
                allow_anonymous: true,
                password_file: PathBuf::new(),
                passwords: None,
            }
        );
        assert_eq!(config.connect_timeout(), Duration::from_millis(2500));
        assert_eq!(config.shutdown_timeout(), Duration::ZERO);
    }

    /// Also proves each environment variable lands in its own field.
    #[test]
    fn env_sets_everything() {
        let passwords = toml_file("u:plain:p\n");
        let env = [
            ("SKEIN_NODE_ID", "9"),
            ("SKEIN_NODE_NAME", "env-node"),
            ("SKEIN_DATA_DIR", "/data"),
            ("SKEIN_MQTT", "10.0.0.1:1883"),
            ("SKEIN_HTTP", "10.0.0.1:8081"),
            ("SKEIN_ADVERTISE_ADDR", "10.0.0.1:1883"),
            ("SKEIN_MAX_CONNECTIONS", "2"),
            ("SKEIN_MAX_PACKET_SIZE", "16"),
            ("SKEIN_MAX_INFLIGHT", "3"),
            ("SKEIN_MAX_QUEUED_MESSAGES", "4"),
            ("SKEIN_MAX_SUBSCRIPTIONS_PER_SESSION", "5"),
            ("SKEIN_MAX_KEEPALIVE", "60"),
            ("SKEIN_CONNECT_TIMEOUT_MS", "5"),
            ("SKEIN_MAX_CLIENT_ID_LEN", "6"),
            ("SKEIN_MAX_TOPIC_ALIAS", "7"),
            ("SKEIN_MAX_SESSION_EXPIRY_INTERVAL", "8"),
            ("SKEIN_RETAIN_AVAILABLE", "0"),
            ("SKEIN_SHUTDOWN_TIMEOUT_MS", "11"),
            ("SKEIN_LOG", "debug"),
            ("SKEIN_WEBHOOK_URLS", "http://a/1,http://b:81/2"),
            (
                "SKEIN_WEBHOOK_RULES",
                r#"[{"action": "on_message_publish", "topic": "x/#"}]"#,
            ),
            ("SKEIN_WEBHOOK_TIMEOUT_MS", "12"),
            ("SKEIN_WEBHOOK_MAX_RETRIES", "13"),
            ("SKEIN_WEBHOOK_CONCURRENCY", "14"),
            ("SKEIN_WEBHOOK_QUEUE_CAPACITY", "15"),
            ("SKEIN_STREAM_ENABLED", "false"),
            ("SKEIN_STREAM_RETENTION_SECS", "16"),
            ("SKEIN_STREAM_MAX_ENTRIES", "17"),
            ("SKEIN_REDIS_URL", "redis://h:18/1"),
            ("SKEIN_REDIS_STREAM_PREFIX", "p19"),
            ("SKEIN_EVENTS_DOLLAR_EVENTS", "0"),
            ("SKEIN_EVENTS_DOLLAR_EVENTS_KINDS", "client.disconnected"),
            ("SKEIN_EVENTS_DOLLAR_EVENT", "1"),
            ("SKEIN_EVENTS_DOLLAR_EVENT_KINDS", "client.ping,"),
            ("SKEIN_EVENTS_PRESENCE_TOPIC", "p/{clientid}"),
            ("SKEIN_EVENTS_PRESENCE_RETAIN", "false"),
            ("SKEIN_EVENTS_QUEUE_CAPACITY", "12"),
            ("SKEIN_EVENTS_SUBSCRIBE_USERNAMES", " ops , ,dev"),
            ("SKEIN_EVENTS_QOS", "2"),
            ("SKEIN_API_TOKEN", " s3cret\n"),
            ("SKEIN_ALLOW_ANONYMOUS", "false"),
            ("SKEIN_PASSWORD_FILE", path_of(&passwords)),
        ];
        assert_eq!(env.len(), SETTINGS.len());
        assert_eq!(
            load(&[], &env).unwrap(),
            Config {
                node_id: 9,
                node_name: "env-node".into(),
                data_dir: "/data".into(),
                mqtt: "10.0.0.1:1883".parse().unwrap(),
                http: "10.0.0.1:8081".parse().unwrap(),
                advertise_addr: "10.0.0.1:1883".into(),
                max_connections: 2,
                max_packet_size: 16,
                max_inflight: 3,
                max_queued_messages: 4,
                max_subscriptions_per_session: 5,
                max_keepalive: 60,
                connect_timeout_ms: 5,
                max_client_id_len: 6,
                max_topic_alias: 7,
                max_session_expiry_interval: 8,
                retain_available: false,
                shutdown_timeout_ms: 11,
                log: "debug".into(),
                webhook_urls: "http://a/1,http://b:81/2".into(),
                webhook_rules: r#"[{"action": "on_message_publish", "topic": "x/#"}]"#.into(),
                webhook_timeout_ms: 12,
                webhook_max_retries: 13,
                webhook_concurrency: 14,
                webhook_queue_capacity: 15,
                stream_enabled: false,
                stream_retention_secs: 16,
                stream_max_entries: 17,
                redis_url: "redis://h:18/1".into(),
                redis_stream_prefix: "p19".into(),
                events_dollar_events: false,
                events_dollar_events_kinds: KindSet::of(&[EventKind::ClientDisconnected]),
                events_dollar_event: true,
                events_dollar_event_kinds: KindSet::of(&[EventKind::ClientPing]),
                events_presence_topic: "p/{clientid}".into(),
                events_presence_retain: false,
                events_queue_capacity: 12,
                events_subscribe_usernames: vec!["ops".into(), "dev".into()],
                events_qos: 2,
                api_token: Secret::new("s3cret"),
                allow_anonymous: false,
                password_file: passwords.path().to_path_buf(),
                passwords: Some(Arc::new(Passwords::parse("u:plain:p\n").unwrap())),
            }
        );
    }

    #[test]
    fn precedence_flag_over_env_over_file() {
        let file = toml_file("max_keepalive = 100\nmqtt = \"127.0.0.1:1000\"\nnode_id = 3\n");
        let path = path_of(&file);

        let config = load(&["--config", path], &[]).unwrap();
        assert_eq!((config.max_keepalive, config.node_id), (100, 3));

        let env = [
            ("SKEIN_MAX_KEEPALIVE", "60"),
            ("SKEIN_MQTT", "127.0.0.1:2000"),
        ];
        let config = load(&["--config", path], &env).unwrap();
        assert_eq!(config.max_keepalive, 60);
        assert_eq!(config.mqtt, "127.0.0.1:2000".parse().unwrap());
        assert_eq!(config.node_id, 3, "untouched file values survive");

        let config = load(&["--config", path, "--mqtt", "127.0.0.1:3000"], &env).unwrap();
        assert_eq!(config.mqtt, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(config.max_keepalive, 60);
    }

    #[test]
    fn flags() {
        let config = load(
            &[
                "--node-id=5",
                "--node-name",
                "n",
                "--data-dir",
                "/tmp/x",
                "--mqtt",
                "127.0.0.1:1",
                "--http",
                "127.0.0.1:2",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(config.node_id, 5);
        assert_eq!(config.node_name, "n");
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.mqtt, "127.0.0.1:1".parse().unwrap());
        assert_eq!(config.http, "127.0.0.1:2".parse().unwrap());
    }

    #[test]
    fn node_name_follows_resolved_node_id() {
        assert_eq!(
            load(&["--node-id", "42"], &[]).unwrap().node_name,
            "skein-42"
        );
        let env = [("SKEIN_NODE_ID", "8")];
        assert_eq!(load(&[], &env).unwrap().node_name, "skein-8");
        let env = [("SKEIN_NODE_ID", "8"), ("SKEIN_NODE_NAME", "mine")];
        assert_eq!(load(&["--node-id", "42"], &env).unwrap().node_name, "mine");
    }

    #[test]
    fn config_path_from_env() {
        let file = toml_file("max_inflight = 5\n");
        let other = toml_file("max_inflight = 6\n");
        let env = [(CONFIG_ENV, path_of(&file))];
        assert_eq!(load(&[], &env).unwrap().max_inflight, 5);
        let config = load(&["--config", path_of(&other)], &env).unwrap();
        assert_eq!(config.max_inflight, 6, "--config beats SKEIN_CONFIG");
    }

    #[test]
    fn unrelated_env_ignored() {
        let env = [
            ("SKEIN_NOT_A_SETTING", "x"),
            ("MAX_KEEPALIVE", "x"),
            ("skein_max_keepalive", "x"),
            ("PATH", "/bin"),
        ];
        assert_eq!(load(&[], &env).unwrap(), Config::default());
    }

    #[test]
    fn booleans() {
        for (text, expected) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("false", false),
            ("False", false),
            ("0", false),
        ] {
            let config = load(&[], &[("SKEIN_RETAIN_AVAILABLE", text)]).unwrap();
            assert_eq!(config.retain_available, expected, "{text}");
        }
        let message = error(
            &[],
            &[("SKEIN_RETAIN_AVAILABLE", "yes")],
            "retain_available",
        );
        assert!(
            message.ends_with("from SKEIN_RETAIN_AVAILABLE"),
            "{message}"
        );

        for (toml, expected) in [("true", true), ("false", false), ("0", false), ("1", true)] {
            let file = toml_file(&format!("retain_available = {toml}\n"));
            let config = load(&["--config", path_of(&file)], &[]).unwrap();
            assert_eq!(config.retain_available, expected, "{toml}");
        }
        let file = toml_file("retain_available = \"true\"\n");
        error(&["--config", path_of(&file)], &[], "retain_available");
    }

    #[test]
    fn bad_env_value() {
        let message = error(&[], &[("SKEIN_MAX_KEEPALIVE", "abc")], "max_keepalive");
        assert_eq!(
            message,
            "config error: max_keepalive: invalid value \"abc\" (expected an integer \
             1..=65535) from SKEIN_MAX_KEEPALIVE"
        );
        error(&[], &[("SKEIN_MQTT", "localhost:1883")], "mqtt");
        error(&[], &[("SKEIN_NODE_NAME", "")], "node_name");
        error(&[], &[("SKEIN_LOG", "foo=notalevel")], "log");
        let message = error(&[], &[("SKEIN_NODE_ID", "1\n2")], "node_id");
        assert!(message.contains(r#""1\n2""#), "{message}");
    }

    #[test]
    fn out_of_range() {
        let message = error(&[], &[("SKEIN_MAX_PACKET_SIZE", "15")], "max_packet_size");
        assert!(
            message.contains("expected an integer 16..=268435455"),
            "{message}"
        );
        error(
            &[],
            &[("SKEIN_MAX_PACKET_SIZE", "268435456")],
            "max_packet_size",
        );
        error(&[], &[("SKEIN_MAX_INFLIGHT", "0")], "max_inflight");
        error(&[], &[("SKEIN_MAX_INFLIGHT", "65536")], "max_inflight");
        error(&[], &[("SKEIN_MAX_KEEPALIVE", "0")], "max_keepalive");
        error(&[], &[("SKEIN_MAX_CONNECTIONS", "0")], "max_connections");
        error(
            &[],
            &[("SKEIN_MAX_QUEUED_MESSAGES", "0")],
            "max_queued_messages",
        );
        error(
            &[],
            &[("SKEIN_MAX_CLIENT_ID_LEN", "65536")],
            "max_client_id_len",
        );
        error(
            &[],
            &[("SKEIN_CONNECT_TIMEOUT_MS", "0")],
            "connect_timeout_ms",
        );
        error(&[], &[("SKEIN_NODE_ID", "-1")], "node_id");

        let file = toml_file("max_keepalive = 70000\n");
        let message = error(&["--config", path_of(&file)], &[], "max_keepalive");
        let expected = format!(
            "config error: max_keepalive: invalid value 70000 (expected an integer 1..=65535) \
             from {}",
            file.path().display()
        );
        assert_eq!(message, expected);
        let file = toml_file("max_session_expiry_interval = -1\n");
        error(
            &["--config", path_of(&file)],
            &[],
            "max_session_expiry_interval",
        );
    }

    #[test]
    fn event_settings() {
        let config = load(&[], &[]).unwrap();
        assert!(config.events_dollar_events && !config.events_dollar_event);
        assert_eq!(config.events_dollar_events_kinds, dollar_events::renders());
        assert_eq!(config.events_dollar_event_kinds, dollar_event::renders());
        assert!(config.events_presence_topic.is_empty());
        assert!(config.events_presence_retain);
        assert_eq!(config.events_queue_capacity, 10_000);
        assert!(config.events_subscribe_usernames.is_empty());
        let config = load(&[], &[("SKEIN_EVENTS_DOLLAR_EVENTS_KINDS", "")]).unwrap();
        assert_eq!(config.events_dollar_events_kinds, KindSet::NONE);

        let message = error(
            &[],
            &[(
                "SKEIN_EVENTS_DOLLAR_EVENTS_KINDS",
                "client.connected,client.bogus",
            )],
            "events_dollar_events_kinds",
        );
        assert!(
            message.contains("client.connected,client.disconnected"),
            "{message}"
        );
        // A real kind the dialect does not render is refused too.
        error(
            &[],
            &[("SKEIN_EVENTS_DOLLAR_EVENTS_KINDS", "message.publish")],
            "events_dollar_events_kinds",
        );
        error(
            &[],
            &[("SKEIN_EVENTS_DOLLAR_EVENT_KINDS", "client.connected")],
            "events_dollar_event_kinds",
        );
        for bad in ["a/+/{clientid}", "a/{nope}", "a/{clientid", "#"] {
            error(
                &[],
                &[("SKEIN_EVENTS_PRESENCE_TOPIC", bad)],
                "events_presence_topic",
            );
        }
        error(
            &[],
            &[("SKEIN_EVENTS_QUEUE_CAPACITY", "0")],
            "events_queue_capacity",
        );
        error(&[], &[("SKEIN_EVENTS_QOS", "3")], "events_qos");
        let file = toml_file("events_dollar_event_kinds = [\"client.ping\", 1]\n");
        error(
            &["--config", path_of(&file)],
            &[],
            "events_dollar_event_kinds",
        );
        let file = toml_file("events_subscribe_usernames = [\"a\", 2]\n");
        error(
            &["--config", path_of(&file)],
            &[],
            "events_subscribe_usernames",
        );
    }

    #[test]
    fn the_password_file_is_read_at_load_and_checked() {
        let config = load(&[], &[]).unwrap();
        assert!(config.allow_anonymous);
        assert!(config.password_file.as_os_str().is_empty() && config.passwords.is_none());

        let file = toml_file("# users\nu:plain:p\n");
        let config = load(&[], &[("SKEIN_PASSWORD_FILE", path_of(&file))]).unwrap();
        let passwords = config.passwords.expect("loaded");
        assert!(passwords.verify("u", b"p"));
        assert!(config.allow_anonymous);

        let message = error(
            &[],
            &[("SKEIN_ALLOW_ANONYMOUS", "false")],
            "allow_anonymous",
        );
        assert!(message.contains("password_file"), "{message}");
        assert!(message.ends_with("from SKEIN_ALLOW_ANONYMOUS"), "{message}");
        // An empty path is "none", from any layer.
        let env = [("SKEIN_ALLOW_ANONYMOUS", "0"), ("SKEIN_PASSWORD_FILE", " ")];
        error(&[], &env, "allow_anonymous");

        let bad = toml_file("u:plain:p\nv:hunter2\n");
        let message = error(
            &[],
            &[("SKEIN_PASSWORD_FILE", path_of(&bad))],
            "password_file",
        );
        let expected = format!(
            "config error: password_file: {}: line 2: expected username:sha256:<hash>:<salt> \
             or username:plain:<password> (from SKEIN_PASSWORD_FILE)",
            bad.path().display()
        );
        assert_eq!(message, expected);
        assert!(!message.contains("hunter2"));

        let conf = toml_file(&format!("password_file = {:?}\n", path_of(&bad)));
        let message = error(&["--config", path_of(&conf)], &[], "password_file");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.ends_with(&format!("(from {})", conf.path().display())));

        let message = error(
            &[],
            &[("SKEIN_PASSWORD_FILE", "/nonexistent/passwd")],
            "password_file",
        );
        assert!(
            message.contains("/nonexistent/passwd: cannot read"),
            "{message}"
        );
    }

    #[test]
    fn bad_flag_value() {
        let message = error(&["--mqtt", "nope"], &[], "mqtt");
        assert!(message.ends_with("from --mqtt"), "{message}");
        let message = error(&["--node-id", "x"], &[], "node_id");
        assert!(message.ends_with("from --node-id"), "{message}");
    }

    #[test]
    fn unknown_toml_key() {
        let file = toml_file("max_keepalive = 10\nmax_keeplive = 10\n");
        let message = error(&["--config", path_of(&file)], &[], "max_keeplive");
        assert!(message.contains("unknown setting"), "{message}");
        // A quoted key can hold a newline; the message must still be one line.
        let file = toml_file("\"a\\nb\" = 1\n");
        error(&["--config", path_of(&file)], &[], "a\\nb");
        let file = toml_file("[mqtt]\nport = 1\n");
        let message = error(&["--config", path_of(&file)], &[], "mqtt");
        assert!(message.contains("(a table)"), "{message}");
    }

    #[test]
    fn bad_type_in_toml() {
        let file = toml_file("max_inflight = \"10\"\n");
        let message = error(&["--config", path_of(&file)], &[], "max_inflight");
        assert!(message.contains(r#"invalid value "10""#), "{message}");
        let file = toml_file("max_inflight = 1.5\n");
        error(&["--config", path_of(&file)], &[], "max_inflight");
        let file = toml_file("mqtt = 1883\n");
        error(&["--config", path_of(&file)], &[], "mqtt");
        let file = toml_file("log = [\"info\"]\n");
        error(&["--config", path_of(&file)], &[], "log");
    }

    #[test]
    fn bad_file() {
        let message = error(&["--config", "/nonexistent/skein.toml"], &[], "config");
        assert!(message.contains("/nonexistent/skein.toml"), "{message}");

        let file = toml_file("max_inflight = 1\nmax_keepalive = = 3\n");
        let message = error(&["--config", path_of(&file)], &[], "config");
        assert!(message.contains("invalid TOML"), "{message}");
        assert!(message.contains("line 2"), "{message}");

        let file = toml_file("max_inflight = 1\nmax_inflight = 2\n");
        error(&["--config", path_of(&file)], &[], "config");
    }

    #[test]
    fn file_errors_win_over_later_layers() {
        // A broken file is reported even when env would override the bad key: the file is
        // still wrong and will bite as soon as the env var goes away.
        let file = toml_file("max_inflight = 0\n");
        let env = [("SKEIN_MAX_INFLIGHT", "5")];
        error(&["--config", path_of(&file)], &env, "max_inflight");
    }

    #[test]
    fn help_version_and_usage_errors() {
        let err = load(&["--help"], &[("SKEIN_MAX_KEEPALIVE", "bad")]).unwrap_err();
        let ConfigError::Clap(clap_err) = &err else {
            panic!("expected clap error, got {err}");
        };
        assert_eq!(clap_err.kind(), clap::error::ErrorKind::DisplayHelp);
        assert_eq!(err.exit_code(), 0);
        let help = clap_err.to_string();
        for needle in [
            "--config",
            "--node-id",
            "--data-dir",
            "--mqtt",
            "--http",
            "SKEIN_",
        ] {
            assert!(help.contains(needle), "help lacks {needle}:\n{help}");
        }
        for setting in SETTINGS {
            assert!(
                help.contains(&env_var_name(setting.name)),
                "{}",
                setting.name
            );
        }

        let err = load(&["--version"], &[]).unwrap_err();
        assert_eq!(err.exit_code(), 0);
        let err = load(&["--bogus"], &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Clap(_)));
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn every_flag_is_a_setting() {
        Cli::command().debug_assert();
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "config" | "help" | "version") {
                continue;
            }
            assert!(find_setting(id).is_some(), "flag {id} has no setting");
            let cli = Cli::try_parse_from(["skein", &format!("--{}", id.replace('_', "-")), "v"])
                .unwrap();
            assert_eq!(cli.flag(id), Some("v"), "Cli::flag doesn't map {id}");
        }
    }

    #[test]
    fn defaults_render_in_help() {
        for setting in SETTINGS {
            assert!(!(setting.default)().is_empty(), "{}", setting.name);
        }
        assert_eq!(
            flag_help("data_dir"),
            "Directory for persistent state [default: ./data] [env: SKEIN_DATA_DIR]"
        );
    }

    #[test]
    fn webhook_stream_and_redis_values_are_checked() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config.webhook_urls, "");
        assert_eq!(config.webhook_rules, "");
        assert_eq!(config.webhook_timeout_ms, 5000);
        assert_eq!(config.webhook_max_retries, 3);
        assert_eq!(config.webhook_concurrency, 8);
        assert_eq!(config.webhook_queue_capacity, 10_000);
        assert!(config.stream_enabled);
        assert_eq!(config.stream_retention_secs, 86_400);
        assert_eq!(config.stream_max_entries, 1_000_000);
        assert_eq!(config.redis_url, "");
        assert_eq!(config.redis_stream_prefix, "skein");

        let message = error(
            &[],
            &[("SKEIN_WEBHOOK_URLS", "https://h/x")],
            "webhook_urls",
        );
        assert!(message.contains("http:// URLs"), "{message}");
        error(
            &[],
            &[("SKEIN_WEBHOOK_URLS", "http://a/1,ftp://b")],
            "webhook_urls",
        );
        error(
            &[],
            &[("SKEIN_WEBHOOK_RULES", "[{\"action\": \"on_nope\"}]")],
            "webhook_rules",
        );
        error(&[], &[("SKEIN_WEBHOOK_RULES", "not json")], "webhook_rules");
        error(
            &[],
            &[("SKEIN_WEBHOOK_CONCURRENCY", "0")],
            "webhook_concurrency",
        );
        error(
            &[],
            &[("SKEIN_WEBHOOK_TIMEOUT_MS", "0")],
            "webhook_timeout_ms",
        );
        error(&[], &[("SKEIN_REDIS_URL", "http://h")], "redis_url");
        error(&[], &[("SKEIN_REDIS_URL", "rediss://h")], "redis_url");
        error(
            &[],
            &[("SKEIN_REDIS_STREAM_PREFIX", "")],
            "redis_stream_prefix",
        );
        let config = load(&[], &[("SKEIN_WEBHOOK_URLS", " "), ("SKEIN_REDIS_URL", "")]).unwrap();
        assert_eq!(
            (config.webhook_urls.as_str(), config.redis_url.as_str()),
            ("", "")
        );
    }
}
