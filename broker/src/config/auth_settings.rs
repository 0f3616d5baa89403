//! The authentication and authorization settings that are read at startup: the password
//! file, the ACL file and the JWT keys, so a bad file stops the node with a configuration
//! error instead of refusing every client later.

use std::collections::HashMap;
use std::sync::Arc;

use super::table::env_var_name;
use super::{Config, ConfigError, Origin};
use crate::acl::AclRules;
use crate::jwt::JwtVerifier;
use crate::password_file::Passwords;

/// Reads the password file now, so a bad one stops the node at startup with a
/// configuration error; refuses `allow_anonymous = false` without one (nobody could
/// connect).
pub(super) fn resolve_auth(
    config: &mut Config,
    origins: &HashMap<&'static str, Origin>,
) -> Result<(), ConfigError> {
    resolve_acl(config, origins)?;
    resolve_jwt(config, origins)?;
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
            // A token or the HTTP authenticator can vouch for a client too.
            let other_source = config.jwt.is_some() || !config.auth_http_url.is_empty();
            if let (false, false, Some(origin)) = (
                config.allow_anonymous,
                other_source,
                origins.get("allow_anonymous"),
            ) {
                return Err(ConfigError::Invalid {
                    setting: "allow_anonymous",
                    value: String::from("false"),
                    expected: String::from(
                        "true when no password_file, jwt_secret, jwt_public_key_file or auth_http_url is set",
                    ),
                    origin: origin.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Reads the ACL file now: a bad one stops the node at startup, naming the line.
fn resolve_acl(
    config: &mut Config,
    origins: &HashMap<&'static str, Origin>,
) -> Result<(), ConfigError> {
    config.acl = None;
    if let (Some(origin), false) = (
        origins.get("acl_file"),
        config.acl_file.as_os_str().is_empty(),
    ) {
        let rules = AclRules::load(&config.acl_file).map_err(|source| ConfigError::AclFile {
            path: config.acl_file.clone(),
            source,
            origin: origin.clone(),
        })?;
        config.acl = Some(Arc::new(rules));
    }
    Ok(())
}

/// Builds the JWT verifier now: an unreadable or unusable key file stops the node.
fn resolve_jwt(
    config: &mut Config,
    origins: &HashMap<&'static str, Origin>,
) -> Result<(), ConfigError> {
    config.jwt = None;
    let key_origin = origins.get("jwt_public_key_file");
    let pem = match key_origin {
        Some(origin) if !config.jwt_public_key_file.as_os_str().is_empty() => {
            let pem =
                std::fs::read(&config.jwt_public_key_file).map_err(|e| ConfigError::JwtKey {
                    path: config.jwt_public_key_file.clone(),
                    message: format!("cannot read: {e}"),
                    origin: origin.clone(),
                })?;
            Some((pem, origin.clone()))
        }
        _ => None,
    };
    let verifier = JwtVerifier::new(
        config.jwt_secret.expose(),
        pem.as_ref().map(|(p, _)| p.as_slice()),
    )
    .map_err(|message| match &pem {
        Some((_, origin)) => ConfigError::JwtKey {
            path: config.jwt_public_key_file.clone(),
            message,
            origin: origin.clone(),
        },
        None => ConfigError::Invalid {
            setting: "jwt_secret",
            value: String::from("(hidden)"),
            expected: message,
            origin: origins
                .get("jwt_secret")
                .cloned()
                .unwrap_or_else(|| Origin::Env(env_var_name("jwt_secret"))),
        },
    })?;
    config.jwt = verifier.map(Arc::new);
    Ok(())
}
