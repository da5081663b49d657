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
        let answer =
            tokio::time::timeout(Duration::from_secs(30), resp.body(MAX_TOKEN_BYTES as usize))
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
pub(crate) mod tests {
    use super::*;

    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use crate::http::ClientSettings;

    fn unsigned(claims: &str) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(b"k");
        let claims: serde_json::Value = serde_json::from_str(claims).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    }

    #[test]
    fn lifetimes_come_from_exp_or_the_dcos_default() {
        let in_an_hour = unsigned(&format!("{{\"uid\":\"u\",\"exp\":{}}}", unix_now() + 3600));
        let got = token_lifetime(&in_an_hour);
        assert!(
            got > Duration::from_secs(3590) && got <= Duration::from_secs(3600),
            "{got:?}"
        );
        assert_eq!(
            token_lifetime(&unsigned("{\"uid\":\"u\",\"exp\":5}")),
            Duration::ZERO
        );
        assert_eq!(
            token_lifetime(&unsigned("{\"uid\":\"u\"}")),
            DEFAULT_TOKEN_LIFETIME
        );
        assert_eq!(token_lifetime("opaque-token"), DEFAULT_TOKEN_LIFETIME);
    }

    #[test]
    fn tokens_must_fit_a_header() {
        assert!(check_token("abc.def-ghi_", "t").is_ok());
        assert!(check_token("", "t").is_err());
        assert!(check_token("a b", "t").is_err());
        assert!(check_token("a\r\nX-Evil: 1", "t").is_err());
    }

    /// An RSA key pair made with `openssl genpkey` in `dir`: the private
    /// key's path and the public key in PEM.
    pub(crate) fn rsa_keypair(dir: &std::path::Path, name: &str) -> (PathBuf, String) {
        let key = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub.pem"));
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
            && std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(&public)
                .status()
                .unwrap()
                .success();
        assert!(ok, "openssl could not make an RSA key");
        (key, std::fs::read_to_string(public).unwrap())
    }

    /// What the fake DC/OS has seen and accepts.
    #[derive(Debug, Default)]
    struct DcosState {
        /// Tokens the API accepts (issued by logins, or set by the test
        /// for token files).
        valid: HashSet<String>,
        logins: usize,
        refused_logins: usize,
        /// API requests answered 401.
        unauthorized: usize,
        /// How long issued tokens are valid, in seconds.
        ttl: u64,
        /// The `Authorization` headers of API requests.
        seen: Vec<Option<String>>,
    }

    /// Stands for DC/OS's IAM login (`POST /acs/api/v1/auth/login`, as
    /// its documentation describes service-account logins) and for a
    /// Marathon API behind Admin Router that answers 401 without a valid
    /// `Authorization: token=...`.
    ///
    /// The login checks the JWT's RS256 signature with the account's
    /// public key, its `uid` (the same as the body's) and its `exp` (in
    /// the future, at most 10 minutes away), and issues tokens valid for
    /// `ttl` seconds.
    struct FakeDcos {
        addr: SocketAddr,
        state: Arc<Mutex<DcosState>>,
    }

    impl FakeDcos {
        async fn start(uid: &'static str, public_pem: String, ttl: u64) -> FakeDcos {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let state = Arc::new(Mutex::new(DcosState {
                ttl,
                ..DcosState::default()
            }));
            let shared = state.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((conn, _)) = listener.accept().await else {
                        return;
                    };
                    let state = shared.clone();
                    let public_pem = public_pem.clone();
                    tokio::spawn(async move {
                        let _ = serve(conn, &state, uid, &public_pem).await;
                    });
                }
            });
            FakeDcos { addr, state }
        }

        fn url(&self, path: &str) -> Url {
            Url::parse(&format!("http://{}{path}", self.addr)).unwrap()
        }

        fn with<T>(&self, f: impl FnOnce(&mut DcosState) -> T) -> T {
            f(&mut self.state.lock().unwrap())
        }
    }

    async fn serve(
        mut conn: TcpStream,
        state: &Mutex<DcosState>,
        uid: &str,
        public_pem: &str,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let (status, answer) = if head.starts_with("POST /acs/api/v1/auth/login ") {
            match check_login(&body, uid, public_pem) {
                Ok(()) => {
                    let mut s = state.lock().unwrap();
                    let token = jsonwebtoken::encode(
                        &jsonwebtoken::Header::default(),
                        &serde_json::json!({"uid": uid, "exp": unix_now() + s.ttl}),
                        &jsonwebtoken::EncodingKey::from_secret(b"iam secret"),
                    )
                    .unwrap();
                    s.logins += 1;
                    s.valid.insert(token.clone());
                    ("200 OK", serde_json::json!({ "token": token }).to_string())
                }
                Err(why) => {
                    state.lock().unwrap().refused_logins += 1;
                    (
                        "401 Unauthorized",
                        serde_json::json!({"title": "Invalid authentication credentials", "description": why, "code": "ERR_INVALID_CREDENTIALS"}).to_string(),
                    )
                }
            }
        } else {
            let auth = header("authorization");
            let mut s = state.lock().unwrap();
            s.seen.push(auth.clone());
            let ok = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("token="))
                .is_some_and(|t| s.valid.contains(t) && !expired(t));
            if ok {
                ("200 OK", "{\"apps\":[]}".to_owned())
            } else {
                s.unauthorized += 1;
                (
                    "401 Unauthorized",
                    "{\"message\":\"unauthorized\"}".to_owned(),
                )
            }
        };
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
        conn.write_all(reply.as_bytes()).await?;
        conn.shutdown().await
    }

    /// An issued token (a JWT) past its `exp`; tokens set by the test
    /// (token files) do not expire.
    fn expired(token: &str) -> bool {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.leeway = 0;
        v.required_spec_claims.clear();
        let decoded = jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(b"iam secret"),
            &v,
        );
        matches!(decoded, Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature)
    }

    fn check_login(body: &[u8], uid: &str, public_pem: &str) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Login {
            uid: String,
            token: String,
        }
        #[derive(serde::Deserialize)]
        struct Claims {
            uid: String,
            exp: u64,
        }
        let login: Login = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.required_spec_claims = ["exp".to_owned()].into();
        v.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(&login.token, &key, &v)
            .map_err(|e| format!("login token: {e}"))?
            .claims;
        if claims.uid != login.uid || login.uid != uid {
            return Err(format!("unknown uid {}", login.uid));
        }
        if claims.exp > unix_now() + 600 {
            return Err("the login token lives too long".to_owned());
        }
        Ok(())
    }

    fn client(auth: AuthSettings) -> Client {
        Client::new(&ClientSettings {
            ca_file: None,
            auth: Some(auth),
            request_timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    async fn get(client: &Client, dcos: &FakeDcos) -> Result<u16, String> {
        let url = dcos.url("/marathon");
        let resp = client
            .open(Method::Get, &url, "/v2/apps", &[], None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(resp.status)
    }

    #[tokio::test]
    async fn a_token_file_is_read_again_on_each_request() {
        let dir = tempfile::tempdir().unwrap();
        let dcos = FakeDcos::start("u", String::new(), 60).await;
        let file = dir.path().join("token");
        std::fs::write(&file, "first-token\n").unwrap();
        dcos.with(|s| s.valid.insert("first-token".into()));
        let client = client(AuthSettings::TokenFile(file.clone()));
        assert_eq!(get(&client, &dcos).await, Ok(200));
        // Rotated on disk: the old one is revoked, the new one works at once.
        std::fs::write(&file, "  second-token  \n").unwrap();
        dcos.with(|s| {
            s.valid.clear();
            s.valid.insert("second-token".into())
        });
        assert_eq!(get(&client, &dcos).await, Ok(200));
        let seen = dcos.with(|s| s.seen.clone());
        assert_eq!(
            seen,
            [
                Some("token=first-token".to_owned()),
                Some("token=second-token".to_owned())
            ]
        );
        // A token file that went away is a clear error, not a request
        // without credentials.
        std::fs::remove_file(&file).unwrap();
        let e = get(&client, &dcos).await.unwrap_err();
        assert!(
            e.contains("authentication: token_file") && e.contains("No such file"),
            "{e}"
        );
        std::fs::write(&file, "two\nlines").unwrap();
        let e = get(&client, &dcos).await.unwrap_err();
        assert!(e.contains("visible ASCII"), "{e}");
        assert_eq!(dcos.with(|s| s.seen.len()), 2);
    }

    #[tokio::test]
    async fn a_service_account_logs_in_and_refreshes_before_expiry_and_after_a_401() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = rsa_keypair(dir.path(), "sa");
        // Tokens valid for 2 s: the client logs in again after about 1 s.
        let dcos = FakeDcos::start("sniroute", public, 2).await;
        let client = client(AuthSettings::ServiceAccount {
            uid: "sniroute".into(),
            private_key_file: key,
            login_url: dcos.url("/acs/api/v1/auth/login"),
        });
        assert_eq!(get(&client, &dcos).await, Ok(200));
        assert_eq!(get(&client, &dcos).await, Ok(200));
        assert_eq!(dcos.with(|s| s.logins), 1, "the token is reused");
        let deadline = Instant::now() + Duration::from_secs(10);
        while dcos.with(|s| s.logins) < 2 {
            assert!(Instant::now() < deadline, "no refresh before expiry");
            assert_eq!(get(&client, &dcos).await, Ok(200));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            dcos.with(|s| s.unauthorized),
            0,
            "refreshed before it expired"
        );
        // Tokens last an hour from now on: once the client holds one (a
        // login counted after the change issued it), no refresh is due.
        let logins = dcos.with(|s| {
            s.ttl = 3600;
            s.logins
        });
        while dcos.with(|s| s.logins) == logins {
            assert!(
                Instant::now() < deadline + Duration::from_secs(10),
                "no refresh"
            );
            assert_eq!(get(&client, &dcos).await, Ok(200));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Revoked (IAM restarted, say): a 401, a login, one retry.
        dcos.with(|s| s.valid.clear());
        let logins = dcos.with(|s| s.logins);
        assert_eq!(get(&client, &dcos).await, Ok(200));
        assert_eq!(dcos.with(|s| (s.logins, s.unauthorized)), (logins + 1, 1));
    }

    #[tokio::test]
    async fn a_wrong_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = rsa_keypair(dir.path(), "right");
        let (wrong, _) = rsa_keypair(dir.path(), "wrong");
        let dcos = FakeDcos::start("sniroute", public, 60).await;
        let login_url = dcos.url("/acs/api/v1/auth/login");
        let c = client(AuthSettings::ServiceAccount {
            uid: "sniroute".into(),
            private_key_file: wrong,
            login_url: login_url.clone(),
        });
        let e = get(&c, &dcos).await.unwrap_err();
        assert!(
            e.contains("login at http://")
                && e.contains("as `sniroute`")
                && e.contains("refused with 401"),
            "{e}"
        );
        assert_eq!(dcos.with(|s| (s.refused_logins, s.seen.len())), (1, 0));
        // Not a key at all.
        let not_key = dir.path().join("not-a-key.pem");
        std::fs::write(
            &not_key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let c = client(AuthSettings::ServiceAccount {
            uid: "sniroute".into(),
            private_key_file: not_key,
            login_url,
        });
        let e = get(&c, &dcos).await.unwrap_err();
        assert!(e.contains("not an RSA private key in PEM"), "{e}");
    }
}
