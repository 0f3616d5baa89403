//! The kinds of setting: how each type of value is parsed, validated and described.

use super::*;
use crate::events::EventKind;

/// How one type of setting is parsed, validated and described.
pub(super) trait Kind {
    type Value;
    /// What a valid value looks like, for error messages and help.
    fn describe(&self) -> String;
    fn parse_text(&self, text: &str) -> Option<Self::Value>;
    fn parse_toml(&self, value: &toml::Value) -> Option<Self::Value>;
    fn show(&self, value: &Self::Value) -> String;
}

/// An integer within `min..=max`.
pub(super) struct Int<T> {
    pub(super) min: T,
    pub(super) max: T,
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

pub(super) struct Bool;

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
pub(super) struct Text;

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
pub(super) struct SecretKind;

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
pub(super) struct Checked {
    pub(super) expected: &'static str,
    pub(super) check: fn(&str) -> bool,
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
pub(super) struct PathKind;

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

/// The free-space guard: a byte count (0 turns it off) or a percentage of the file system.
pub(super) struct MinFreeKind;

impl Kind for MinFreeKind {
    type Value = skein_storage::MinFree;
    fn describe(&self) -> String {
        String::from(
            "a byte count (0: off) or a percentage of the file system below 100% such as \"5%\"",
        )
    }
    fn parse_text(&self, text: &str) -> Option<Self::Value> {
        skein_storage::MinFree::parse(text)
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<Self::Value> {
        match value {
            toml::Value::Integer(n) => u64::try_from(*n).ok().map(skein_storage::MinFree::Bytes),
            toml::Value::String(s) => self.parse_text(s),
            _ => None,
        }
    }
    fn show(&self, value: &Self::Value) -> String {
        value.to_string()
    }
}

/// A filesystem path, or empty for none.
pub(super) struct OptionalPath;

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
pub(super) struct EventKinds {
    pub(super) renders: KindSet,
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
pub(super) struct Names;

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
pub(super) struct TopicTemplate;

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
pub(super) struct Addr;

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
pub(super) struct Filter;

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

/// An `IP:port` socket address, or empty for none (a listener that is off).
pub(super) struct OptionalAddr;

impl Kind for OptionalAddr {
    type Value = Option<SocketAddr>;
    fn describe(&self) -> String {
        String::from("an IP:port socket address such as 0.0.0.0:8883, or empty (off)")
    }
    fn parse_text(&self, text: &str) -> Option<Option<SocketAddr>> {
        let text = text.trim();
        if text.is_empty() {
            return Some(None);
        }
        text.parse().ok().map(Some)
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<Option<SocketAddr>> {
        self.parse_text(value.as_str()?)
    }
    fn show(&self, value: &Option<SocketAddr>) -> String {
        value.map(|a| a.to_string()).unwrap_or_default()
    }
}

/// `none`, `optional` or `required`.
pub(super) struct ClientCertKind;

impl Kind for ClientCertKind {
    type Value = ClientCertMode;
    fn describe(&self) -> String {
        String::from("none, optional or required")
    }
    fn parse_text(&self, text: &str) -> Option<ClientCertMode> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" => Some(ClientCertMode::None),
            "optional" => Some(ClientCertMode::Optional),
            "required" => Some(ClientCertMode::Required),
            _ => None,
        }
    }
    fn parse_toml(&self, value: &toml::Value) -> Option<ClientCertMode> {
        self.parse_text(value.as_str()?)
    }
    fn show(&self, value: &ClientCertMode) -> String {
        value.as_str().to_owned()
    }
}
