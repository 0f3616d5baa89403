//! The command line: the few settings that have flags, and the `--help` text every
//! setting is listed in.

use std::path::PathBuf;

use clap::Parser;

use super::table::{env_var_name, find_setting, SETTINGS};
use super::{CONFIG_ENV, ENV_PREFIX};

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
pub(super) struct Cli {
    /// TOML configuration file (also SKEIN_CONFIG).
    #[arg(long, value_name = "PATH")]
    pub(super) config: Option<PathBuf>,
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
    #[arg(long, value_name = "ADDR", help = flag_help("mqtts"))]
    mqtts: Option<String>,
    #[arg(long, value_name = "ADDR", help = flag_help("ws"))]
    ws: Option<String>,
    #[arg(long, value_name = "ADDR", help = flag_help("wss"))]
    wss: Option<String>,
    #[arg(long, value_name = "ADDR", help = flag_help("grpc"))]
    grpc: Option<String>,
    #[arg(long, value_name = "ID@HOST:PORT,...", help = flag_help("peers"))]
    peers: Option<String>,
    #[arg(long, value_name = "HOST:PORT", help = flag_help("join"))]
    join: Option<String>,
}

impl Cli {
    /// The flag's value for a setting, if that setting has a flag and it was given.
    pub(super) fn flag(&self, setting: &str) -> Option<&str> {
        let value = match setting {
            "node_id" => &self.node_id,
            "node_name" => &self.node_name,
            "data_dir" => &self.data_dir,
            "mqtt" => &self.mqtt,
            "http" => &self.http,
            "mqtts" => &self.mqtts,
            "ws" => &self.ws,
            "wss" => &self.wss,
            "grpc" => &self.grpc,
            "peers" => &self.peers,
            "join" => &self.join,
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

pub(super) fn flag_help(name: &str) -> String {
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
