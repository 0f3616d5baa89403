//! JWT authentication: the CONNECT password carries a token signed with `jwt_secret`
//! (HS256/384/512) or with the private key of `jwt_public_key_file` (RS256/384/512 for an
//! RSA key, ES256/384 for an EC key).
//!
//! Claims read (all optional): `exp` (seconds since the epoch: an expired token is
//! refused, and a client connected with it is disconnected when it expires),
//! `clientid` and `username` (when present they must equal the CONNECT's), and `acl`, the
//! topics the client may use, in EMQX's shape: `{"pub": [FILTER..], "sub": [FILTER..],
//! "all": [FILTER..]}`, where `%c` / `%u` stand for the client id / username. An `acl` claim narrows what the ACL file allows (both must
//! allow), it never widens it.

use std::collections::HashSet;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::topic::matches;

/// Checks tokens against the configured key(s).
pub struct JwtVerifier {
    secret: Option<DecodingKey>,
    public: Option<(DecodingKey, Vec<Algorithm>)>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("secret", &self.secret.is_some())
            .field("public_key", &self.public.as_ref().map(|(_, a)| a.clone()))
            .finish()
    }
}

impl PartialEq for JwtVerifier {
    /// Keys aren't comparable: two verifiers are equal when they accept the same kinds.
    fn eq(&self, other: &Self) -> bool {
        self.secret.is_some() == other.secret.is_some()
            && self.public.as_ref().map(|p| &p.1) == other.public.as_ref().map(|p| &p.1)
    }
}

/// Why a token was refused; `label` is the metric's `outcome`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token's {0} claim does not match the CONNECT")]
    ClaimsMismatch(&'static str),
}

impl JwtError {
    pub fn label(&self) -> &'static str {
        match self {
            JwtError::Expired => "expired",
            JwtError::BadSignature => "bad_signature",
            JwtError::Invalid(_) => "invalid",
            JwtError::ClaimsMismatch(_) => "claims_mismatch",
        }
    }
}

/// The `acl` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TokenAcl {
    #[serde(default, rename = "pub")]
    pub publish: Vec<String>,
    #[serde(default, rename = "sub")]
    pub subscribe: Vec<String>,
    #[serde(default)]
    pub all: Vec<String>,
}

impl TokenAcl {
    /// The claim with `%c` / `%u` filled in for this client (as ACL file patterns are;
    /// a filter that can't apply to it is left out).
    pub fn for_client(self, client_id: &str, username: Option<&str>) -> TokenAcl {
        let fill = |filters: Vec<String>| {
            filters
                .iter()
                .filter_map(|f| crate::acl::rules::substitute(f, client_id, username))
                .collect()
        };
        TokenAcl {
            publish: fill(self.publish),
            subscribe: fill(self.subscribe),
            all: fill(self.all),
        }
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish
            .iter()
            .chain(&self.all)
            .any(|f| matches(f, topic))
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe
            .iter()
            .chain(&self.all)
            .any(|f| crate::acl::rules::covers(f, filter))
    }

    pub fn may_receive(&self, topic: &str) -> bool {
        self.subscribe
            .iter()
            .chain(&self.all)
            .any(|f| matches(f, topic))
    }
}

/// What a verified token says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TokenClaims {
    #[serde(default)]
    pub exp: Option<u64>,
    #[serde(default)]
    pub clientid: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub acl: Option<TokenAcl>,
}

impl JwtVerifier {
    /// A verifier for `secret` (HMAC) and/or the PEM public key `public_pem`; None when
    /// neither is given.
    pub fn new(secret: &str, public_pem: Option<&[u8]>) -> Result<Option<JwtVerifier>, String> {
        let secret = if secret.is_empty() {
            None
        } else {
            Some(DecodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?)
        };
        let public = match public_pem {
            None => None,
            Some(pem) => {
                if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                    Some((
                        key,
                        vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                    ))
                } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                    Some((key, vec![Algorithm::ES256, Algorithm::ES384]))
                } else {
                    return Err(String::from(
                        "not a PEM RSA or EC public key (-----BEGIN PUBLIC KEY-----)",
                    ));
                }
            }
        };
        if secret.is_none() && public.is_none() {
            return Ok(None);
        }
        Ok(Some(JwtVerifier { secret, public }))
    }

    /// Whether `password` has a JWT's shape (three base64url parts, the first starting
    /// with `eyJ`, a JSON object): only such passwords are checked as tokens.
    pub fn looks_like_jwt(password: &[u8]) -> bool {
        password.starts_with(b"eyJ")
            && password.iter().filter(|&&b| b == b'.').count() == 2
            && password
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
    }

    /// Verifies `token` for the client `client_id` / `username`.
    pub fn verify(
        &self,
        token: &str,
        client_id: &str,
        username: Option<&str>,
    ) -> Result<TokenClaims, JwtError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| JwtError::Invalid(e.to_string()))?;
        let key = match (&self.secret, &self.public) {
            (Some(secret), _) if is_hmac(header.alg) => secret,
            (_, Some((key, algorithms))) if algorithms.contains(&header.alg) => key,
            _ => {
                return Err(JwtError::Invalid(format!(
                    "algorithm {:?} is not configured",
                    header.alg
                )))
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims = HashSet::new();
        validation.leeway = 0;
        validation.validate_aud = false;
        let data =
            jsonwebtoken::decode::<TokenClaims>(token, key, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => JwtError::Expired,
                    ErrorKind::InvalidSignature => JwtError::BadSignature,
                    _ => JwtError::Invalid(e.to_string()),
                }
            })?;
        let claims = data.claims;
        if claims.clientid.as_deref().is_some_and(|c| c != client_id) {
            return Err(JwtError::ClaimsMismatch("clientid"));
        }
        if claims
            .username
            .as_deref()
            .is_some_and(|u| Some(u) != username)
        {
            return Err(JwtError::ClaimsMismatch("username"));
        }
        Ok(claims)
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    #[test]
    fn hs256_tokens_and_their_claims() {
        let v = JwtVerifier::new("k3y", None).unwrap().unwrap();
        let good = token(
            "k3y",
            serde_json::json!({"exp": now() + 60, "clientid": "c1", "acl": {"pub": ["up/#"], "sub": ["down/+"]}}),
        );
        assert!(JwtVerifier::looks_like_jwt(good.as_bytes()));
        let claims = v.verify(&good, "c1", None).unwrap();
        let acl = claims.acl.unwrap();
        assert!(acl.may_publish("up/x/y"));
        assert!(!acl.may_publish("down/x"));
        assert!(acl.may_subscribe("down/+"));
        assert!(!acl.may_subscribe("down/#"));
        assert_eq!(
            v.verify(&good, "c2", None),
            Err(JwtError::ClaimsMismatch("clientid"))
        );
        let expired = token("k3y", serde_json::json!({"exp": now() - 1}));
        assert_eq!(v.verify(&expired, "c", None), Err(JwtError::Expired));
        let forged = token("other", serde_json::json!({"exp": now() + 60}));
        assert_eq!(v.verify(&forged, "c", None), Err(JwtError::BadSignature));
        let named = token("k3y", serde_json::json!({"username": "u"}));
        assert!(v.verify(&named, "c", Some("u")).is_ok());
        assert_eq!(
            v.verify(&named, "c", None),
            Err(JwtError::ClaimsMismatch("username"))
        );
        assert!(!JwtVerifier::looks_like_jwt(b"hunter2"));
        assert!(matches!(
            v.verify("eyJ.x.y", "c", None),
            Err(JwtError::Invalid(_))
        ));
    }

    #[test]
    fn nothing_configured_is_none_and_a_bad_key_is_an_error() {
        assert!(JwtVerifier::new("", None).unwrap().is_none());
        assert!(JwtVerifier::new("", Some(b"not a key")).is_err());
    }
}
