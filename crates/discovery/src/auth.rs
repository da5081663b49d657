//! Credentials for DC/OS: what goes into `Authorization: token=...`.
//!
//! - A token file ([`AuthSettings::TokenFile`]) is read again on each
//!   request, so a token rotated on disk is used at once.
//! - A service account ([`AuthSettings::ServiceAccount`]) logs in the way
//!   DC/OS documents it: a short-lived RS256 JWT with the claims
//!   `{"uid": ..., "exp": ...}`, signed by the account's private key, is
//!   POSTed as `{"uid": ..., "token": <jwt>}` to the login URL
//!   (`https://leader.mesos/acs/api/v1/auth/login`), which answers
//!   `{"token": "..."}`. That token is kept and used until half of its
//!   lifetime (its `exp` claim, read without verifying it; DC/OS's default
//!   of 5 days when it has none) has passed, then the account logs in
//!   again. A 401 from a server also makes it log in again
//!   ([`crate::http::Client::open`] retries the request once). The key
//!   file is read at each login, so a rotated key is used too.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::http::{Client, Error, Method, Url};

/// The largest token file or login answer read.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;
/// The largest private key file read.
const MAX_KEY_BYTES: u64 = 64 * 1024;
/// Lifetime of the JWT that proves the key at login (DC/OS's own CLI
/// uses minutes too).
const LOGIN_JWT_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// A login token's lifetime when it carries no `exp` claim: DC/OS's
/// default (`expiration` of the IAM service).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(5 * 24 * 3600);
/// A token is used at most this long before a new login, however long it
/// is valid.
const MAX_TOKEN_USE: Duration = Duration::from_secs(24 * 3600);

/// Where a source's credentials come from (`auth` under a discovery
/// source).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AuthSettings {
    /// `auth: {token_file: PATH}`: the file holds the token (surrounding
    /// whitespace trimmed); read on each request.
    TokenFile(PathBuf),
    /// `auth: {service_account: {uid, private_key_file, login_url}}`.
    ServiceAccount {
        /// The service account's id.
        uid: String,
        /// Its RSA private key in PEM (PKCS#1 or PKCS#8).
        private_key_file: PathBuf,
        /// DC/OS's login endpoint, such as
        /// `https://leader.mesos/acs/api/v1/auth/login`.
        login_url: Url,
    },
}

/// A token from a login, and when to log in again.
#[derive(Debug)]
struct Cached {
    token: String,
    refresh_at: Instant,
}

/// A source's credentials, shared by its requests.
#[derive(Debug)]
pub(crate) struct Auth {
    settings: AuthSettings,
    /// The client logins go through (the source's, without `auth`).
    client: Client,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

#[derive(serde::Serialize)]
struct LoginClaims<'a> {
    uid: &'a str,
    exp: u64,
}

#[derive(serde::Deserialize)]
struct ExpClaim {
    exp: Option<u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Reads at most `limit` bytes of `path` as text.
async fn read_small(path: &std::path::Path, what: &str, limit: u64) -> Result<String, Error> {
    let shown = path.display();
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| Error::Auth(format!("{what} {shown}: {e}")))?;
    if meta.len() > limit {
        return Err(Error::Auth(format!(
            "{what} {shown}: {} bytes is too large",
            meta.len()
        )));
    }
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| Error::Auth(format!("{what} {shown}: {e}")))?;
    String::from_utf8(bytes).map_err(|_| Error::Auth(format!("{what} {shown}: not UTF-8 text")))
}

/// A token fit for a header: visible ASCII only.
fn check_token(token: &str, from: &str) -> Result<(), Error> {
    if token.is_empty() {
        return Err(Error::Auth(format!("{from}: the token is empty")));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Auth(format!(
            "{from}: the token holds characters other than visible ASCII"
        )));
    }
    Ok(())
}

impl Auth {
    pub(crate) fn new(settings: AuthSettings, client: Client) -> Self {
        Self {
            settings,
            client,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether a 401 should make [`Auth::token`] fetch a new token (a
    /// token file gives the same token until it is rotated on disk).
    pub(crate) fn renews_on_401(&self) -> bool {
        matches!(self.settings, AuthSettings::ServiceAccount { .. })
    }

    /// The token to send now.
    ///
    /// # Errors
    /// The token file cannot be read; the login fails.
    pub(crate) async fn token(&self) -> Result<String, Error> {
        match &self.settings {
            AuthSettings::TokenFile(path) => {
                let text = read_small(path, "token_file", MAX_TOKEN_BYTES).await?;
                let token = text.trim();
                check_token(token, &format!("token_file {}", path.display()))?;
                Ok(token.to_owned())
            }
            AuthSettings::ServiceAccount {
                uid,
                private_key_file,
                login_url,
            } => {
                let mut cached = self.cached.lock().await;
                if let Some(c) = cached.as_ref() {
                    if Instant::now() < c.refresh_at {
                        return Ok(c.token.clone());
                    }
                }
                let (token, lifetime) = self.login(uid, private_key_file, login_url).await?;
                tracing::info!(uid = %uid, login_url = %login_url, valid_for = ?lifetime,
                    "DC/OS service-account login done");
                let token_clone = token.clone();
                *cached = Some(Cached {
                    token,
                    refresh_at: Instant::now() + (lifetime / 2).min(MAX_TOKEN_USE),
                });
                Ok(token_clone)
            }
        }
    }

    /// Drops `token` (refused with a 401) so the next [`Auth::token`]
    /// logs in again; a newer token from a concurrent login stays.
    pub(crate) async fn forget(&self, token: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == token) {
            *cached = None;
        }
    }

    /// One login: the signed JWT out, the token and its lifetime back.
    async fn login(
        &self,
        uid: &str,
        key_file: &std::path::Path,
        login_url: &Url,
    ) -> Result<(String, Duration), Error> {
        let pem = read_small(key_file, "private_key_file", MAX_KEY_BYTES).await?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
            Error::Auth(format!(
                "private_key_file {}: not an RSA private key in PEM: {e}",
                key_file.display()
            ))
        })?;
        let claims = LoginClaims {
            uid,
            exp: unix_now() + LOGIN_JWT_LIFETIME.as_secs(),
        };
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .map_err(|e| Error::Auth(format!("signing the login JWT: {e}")))?;
        let body = serde_json::json!({"uid": uid, "token": jwt}).to_string();
        let failed = |why: String| Error::Auth(format!("login at {login_url} as `{uid}`: {why}"));
        let resp = self
            .client
            .send(
                Method::Post,
                login_url,
                "",
                &[
                    ("Content-Type", "application/json"),
                    ("Accept", "application/json"),
                ],
                Some(body.into_bytes()),
                None,
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status;
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            resp.body(MAX_TOKEN_BYTES as usize),
        )
        .await
        .map_err(|_| failed("the answer took too long".to_owned()))?
        .map_err(|e| failed(e.to_string()))?;
        if status != 200 {
            let text = String::from_utf8_lossy(&answer);
            let text: String = text.chars().take(300).collect();
            let hint = if status == 401 {
                " (is the service account's public key the pair of private_key_file, and the uid right?)"
            } else {
                ""
            };
            return Err(failed(format!("refused with {status}{hint}: {text}")));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            token: String,
        }
        let answer: Answer = serde_json::from_slice(&answer)
            .map_err(|e| failed(format!("the answer is not `{{\"token\": ...}}`: {e}")))?;
        check_token(&answer.token, &format!("login at {login_url}"))?;
        let lifetime = token_lifetime(&answer.token);
        Ok((answer.token, lifetime))
    }
}

/// How long `token` stays valid, from its `exp` claim read without
/// verifying it (the router only needs to know when to log in again);
/// DC/OS's default lifetime when it has none or cannot be read.
fn token_lifetime(token: &str) -> Duration {
    let mut validation = jsonwebtoken::Validation::default();
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_secret(&[]);
    match jsonwebtoken::decode::<ExpClaim>(token, &key, &validation) {
        Ok(data) => match data.claims.exp {
            Some(exp) => Duration::from_secs(exp.saturating_sub(unix_now())),
            None => DEFAULT_TOKEN_LIFETIME,
        },
        Err(_) => DEFAULT_TOKEN_LIFETIME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsigned(claims: &str) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(b"k");
        let claims: serde_json::Value = serde_json::from_str(claims).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    #[test]
    fn lifetimes_come_from_exp_or_the_dcos_default() {
        let in_an_hour = unsigned(&format!("{{\"uid\":\"u\",\"exp\":{}}}", unix_now() + 3600));
        let got = token_lifetime(&in_an_hour);
        assert!(got > Duration::from_secs(3590) && got <= Duration::from_secs(3600), "{got:?}");
        assert_eq!(token_lifetime(&unsigned("{\"uid\":\"u\",\"exp\":5}")), Duration::ZERO);
        assert_eq!(token_lifetime(&unsigned("{\"uid\":\"u\"}")), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(token_lifetime("opaque-token"), DEFAULT_TOKEN_LIFETIME);
    }

    #[test]
    fn tokens_must_fit_a_header() {
        assert!(check_token("abc.def-ghi_", "t").is_ok());
        assert!(check_token("", "t").is_err());
        assert!(check_token("a b", "t").is_err());
        assert!(check_token("a\r\nX-Evil: 1", "t").is_err());
    }
}
