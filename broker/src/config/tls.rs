//! The TLS settings that depend on each other: a TLS listener needs a certificate and key,
//! client certificates need a CA to be verified against.

use std::collections::HashMap;

use super::{Config, ConfigError, Origin};

/// Whether TLS clients are asked for a certificate (`tls_client_cert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertMode {
    /// Not asked for.
    None,
    /// Asked for and verified when sent; a client without one still connects.
    Optional,
    /// A client without a valid certificate fails the handshake.
    Required,
}

impl ClientCertMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCertMode::None => "none",
            ClientCertMode::Optional => "optional",
            ClientCertMode::Required => "required",
        }
    }
}

impl Config {
    /// Whether a listener needs the TLS settings (`mqtts` or `wss`).
    pub fn tls_enabled(&self) -> bool {
        self.mqtts.is_some() || self.wss.is_some()
    }

    pub fn tls_handshake_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.tls_handshake_timeout_ms)
    }
}

pub(super) fn check(
    config: &Config,
    origins: &HashMap<&'static str, Origin>,
) -> Result<(), ConfigError> {
    if !config.tls_enabled() {
        return Ok(());
    }
    let listener = if config.mqtts.is_some() {
        "mqtts"
    } else {
        "wss"
    };
    let missing = |setting: &'static str, why: String| ConfigError::Invalid {
        setting,
        value: String::from("\"\""),
        expected: why,
        origin: origins
            .get(setting)
            .or_else(|| origins.get(listener))
            .cloned()
            // A listener that is on was set somewhere; the flag is the likeliest place.
            .unwrap_or_else(|| Origin::Flag(format!("--{listener}"))),
    };
    for setting in ["tls_cert_file", "tls_key_file"] {
        let path = if setting == "tls_cert_file" {
            &config.tls_cert_file
        } else {
            &config.tls_key_file
        };
        if path.as_os_str().is_empty() {
            return Err(missing(setting, format!("a PEM file, as {listener} is on")));
        }
    }
    if config.tls_client_cert != ClientCertMode::None
        && config.tls_client_ca_file.as_os_str().is_empty()
    {
        return Err(missing(
            "tls_client_ca_file",
            format!(
                "a PEM file of CA certificates, as tls_client_cert is {}",
                config.tls_client_cert.as_str()
            ),
        ));
    }
    Ok(())
}
