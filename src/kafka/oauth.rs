//! SASL OAUTHBEARER with tokens from an OAuth 2 token endpoint, by the client-credentials
//! grant (RFC 6749 §4.4), as Kafka's and librdkafka's OIDC clients get them: a POST of
//! `grant_type=client_credentials` (and `scope`) with the client id and secret in HTTP
//! Basic authentication, as they are (not form-encoded first: Kafka's Java client by
//! default and librdkafka send them so, and identity providers expect that). A token
//! serves every connection to the cluster until 80 % of its lifetime has passed
//! (librdkafka's rule), then the next connection fetches a new one. The initial client
//! response of RFC 7628 carries it to the broker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::access::{OAuthSettings, Secret};

/// The bound on one token request to an OAuth token endpoint.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The endpoint did not answer, or not over HTTP.
    #[error("the token endpoint {endpoint} could not be reached: {reason}")]
    Unreachable {
        /// `sasl.oauthbearer.token.endpoint.url`.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The endpoint answered with an error (a wrong client id or secret, a scope it
    /// refuses).
    #[error("the token endpoint {endpoint} refused client {client_id}: HTTP {status}{said}; check sasl.oauthbearer.client.id, sasl.oauthbearer.client.secret and sasl.oauthbearer.scope")]
    Refused {
        /// `sasl.oauthbearer.token.endpoint.url`.
        endpoint: String,
        /// `sasl.oauthbearer.client.id`.
        client_id: String,
        /// The HTTP status.
        status: u16,
        /// The endpoint's `error` and `error_description`, if it gave them.
        said: String,
    },
    /// The endpoint answered with a status that asks to come back later (408, 429, 5xx).
    #[error("the token endpoint {endpoint} answered HTTP {status}{said}; asking again later")]
    Busy {
        /// `sasl.oauthbearer.token.endpoint.url`.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The endpoint's `error` and `error_description`, if it gave them.
        said: String,
    },
    /// The answer holds no usable token.
    #[error("the token endpoint {endpoint} answered without a usable access token: {reason}")]
    NoToken {
        /// `sasl.oauthbearer.token.endpoint.url`.
        endpoint: String,
        /// What is wrong with the answer.
        reason: String,
    },
}

/// A token and when to fetch the next one.
#[derive(Debug, Clone)]
struct Token {
    value: Secret,
    refresh_at: Instant,
    expires_at: Instant,
}

/// A cached token's key: endpoint, client id, scope.
type Key = (String, String, String);

/// Tokens by [`Key`]: shared by every connection of the process.
static TOKENS: Mutex<Option<HashMap<Key, Token>>> = Mutex::new(None);

fn key_of(settings: &OAuthSettings, client_id: &str) -> Key {
    (
        settings.token_endpoint.clone(),
        client_id.to_owned(),
        settings.scope.clone().unwrap_or_default(),
    )
}

/// One token request at a time: connections that find the token stale together (they
/// all broke at its expiry) wait for one fetch instead of each sending its own.
static FETCHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The cached token of `key`, while less than 80 % of its lifetime has passed.
fn cached(key: &Key) -> Option<Secret> {
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    let t = tokens.as_ref()?.get(key)?;
    (Instant::now() < t.refresh_at).then(|| t.value.clone())
}

/// A token for `client_id`: the cached one while less than 80 % of its lifetime has
/// passed, else a new one from the endpoint. `true` with a token just fetched.
pub async fn token(
    settings: &OAuthSettings,
    client_id: &str,
    secret: &Secret,
    timeout: Duration,
) -> Result<(Secret, bool), OAuthError> {
    let key = key_of(settings, client_id);
    if let Some(t) = cached(&key) {
        return Ok((t, false));
    }
    let _one_at_a_time = FETCHING.lock().await;
    if let Some(t) = cached(&key) {
        return Ok((t, false));
    }
    let (settings, client_id, secret) = (settings.clone(), client_id.to_owned(), secret.clone());
    let endpoint = key.0.clone();
    // The token is cached by the request's own task, so a connection attempt given up
    // meanwhile (its timeout) does not throw the token away.
    tokio::task::spawn_blocking(move || {
        let fetched = fetch(&settings, &client_id, &secret, timeout)?;
        tracing::debug!(endpoint = %key.0, client_id = %key.1, expires_in = ?fetched.expires_at.saturating_duration_since(Instant::now()), "OAuth token fetched");
        let value = fetched.value.clone();
        let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get_or_insert_with(HashMap::new).insert(key, fetched);
        Ok((value, true))
    })
    .await
    .map_err(|e| OAuthError::Unreachable {
        endpoint,
        reason: format!("the request's task failed: {e}"),
    })?
}

/// Drops the cached token of `client_id` (a broker refused it): the next connection
/// fetches a new one.
pub fn forget(settings: &OAuthSettings, client_id: &str) {
    let key = key_of(settings, client_id);
    let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = tokens.as_mut() {
        m.remove(&key);
    }
}

/// The cached token's remaining lifetime (for `check`).
pub fn cached_lifetime(settings: &OAuthSettings, client_id: &str) -> Option<Duration> {
    let key = key_of(settings, client_id);
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    let t = tokens.as_ref()?.get(&key)?;
    Some(t.expires_at.saturating_duration_since(Instant::now()))
}

/// One client-credentials request.
fn fetch(
    settings: &OAuthSettings,
    client_id: &str,
    secret: &Secret,
    timeout: Duration,
) -> Result<Token, OAuthError> {
    let endpoint = &settings.token_endpoint;
    let unreachable = |reason: String| OAuthError::Unreachable {
        endpoint: endpoint.clone(),
        reason,
    };
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{client_id}:{}", secret.expose()));
    let mut body = "grant_type=client_credentials".to_owned();
    if let Some(scope) = &settings.scope {
        body.push_str("&scope=");
        body.push_str(&form_encode(scope));
    }
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let started = Instant::now();
    let mut response = agent
        .post(endpoint)
        .header("Authorization", &format!("Basic {basic}"))
        .header("Accept", "application/json")
        .content_type("application/x-www-form-urlencoded")
        .send(body.as_bytes())
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| unreachable(format!("reading its answer: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&status) {
        let field = |name: &str| json.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let said = match (field("error"), field("error_description")) {
            (Some(e), Some(d)) => format!(" ({e}: {d})"),
            (Some(e), None) => format!(" ({e})"),
            _ => String::new(),
        };
        if status == 408 || status == 429 || status >= 500 {
            return Err(OAuthError::Busy {
                endpoint: endpoint.clone(),
                status,
                said,
            });
        }
        return Err(OAuthError::Refused {
            endpoint: endpoint.clone(),
            client_id: client_id.to_owned(),
            status,
            said,
        });
    }
    let no_token = |reason: &str| OAuthError::NoToken {
        endpoint: endpoint.clone(),
        reason: reason.to_owned(),
    };
    let access_token = json
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| no_token("no access_token in the JSON answer"))?;
    // The lifetime: expires_in if given, else the JWT's exp claim.
    // (Some providers send expires_in as a string.) At most a day: a token is fetched
    // again at least that often.
    let expires_in = json.get("expires_in").and_then(|v| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    });
    let lifetime = match expires_in {
        Some(secs) if secs > 0.0 && secs.is_finite() => {
            Duration::from_secs_f64(secs.min(MAX_LIFETIME_SECS))
        }
        _ => jwt_lifetime(access_token).ok_or_else(|| {
            no_token("neither expires_in nor a JWT exp claim says how long the token lasts")
        })?,
    };
    Ok(Token {
        value: Secret(access_token.to_owned()),
        refresh_at: started + lifetime.mul_f64(0.8),
        expires_at: started + lifetime,
    })
}

/// How long a JWT lasts from now, by its `exp` claim (the one claim read: the broker
/// validates the token, not the client).
fn jwt_lifetime(jwt: &str) -> Option<Duration> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    (exp > now && exp.is_finite())
        .then(|| Duration::from_secs_f64((exp - now).min(MAX_LIFETIME_SECS)))
}

/// The longest a token is cached, whatever it says.
const MAX_LIFETIME_SECS: f64 = 86_400.0;

/// `application/x-www-form-urlencoded` of one value (RFC 6749 appendix B), for the
/// scope in the request's body.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The client's first (and only) message of OAUTHBEARER (RFC 7628 §3.1): the GS2 header,
/// the token, then the extensions, each `key=value`, separated by `^A`.
pub fn initial_response(token: &Secret, extensions: &[(String, String)]) -> Vec<u8> {
    let mut message = format!("n,,\x01auth=Bearer {}\x01", token.expose());
    for (key, value) in extensions {
        message.push_str(&format!("{key}={value}\x01"));
    }
    message.push('\x01');
    message.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_response_is_rfc_7628s() {
        let ext = vec![("logicalCluster".to_owned(), "lkc-1".to_owned())];
        assert_eq!(
            initial_response(&Secret("t.o.k".into()), &ext),
            b"n,,\x01auth=Bearer t.o.k\x01logicalCluster=lkc-1\x01\x01"
        );
        assert_eq!(
            initial_response(&Secret("abc".into()), &[]),
            b"n,,\x01auth=Bearer abc\x01\x01"
        );
    }

    #[test]
    fn form_encoding_escapes_what_basic_auth_and_forms_need() {
        assert_eq!(form_encode("a b:c/d+é"), "a+b%3Ac%2Fd%2B%C3%A9");
        assert_eq!(form_encode("AZaz09-._*"), "AZaz09-._*");
    }

    #[test]
    fn a_jwts_lifetime_is_read_from_exp() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = format!(r#"{{"sub":"x","exp":{}}}"#, now + 600);
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(&claims));
        let lifetime = jwt_lifetime(&jwt).unwrap();
        assert!(lifetime > Duration::from_secs(590) && lifetime <= Duration::from_secs(600));
        let expired = format!(
            "{}.{}.sig",
            b64("{}"),
            b64(&format!(r#"{{"exp":{}}}"#, now - 5))
        );
        assert_eq!(jwt_lifetime(&expired), None);
        assert_eq!(jwt_lifetime("not-a-jwt"), None);
    }

    /// A token endpoint on loopback that answers each request with the next of
    /// `answers` (status, body), and records the requests it got.
    fn endpoint(answers: Vec<(u16, String)>) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (status, body) in answers {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then the body its Content-Length gives.
                loop {
                    let n = s.read(&mut buf).unwrap();
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                tx.send(String::from_utf8_lossy(&request).to_string())
                    .unwrap();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(reply.as_bytes()).unwrap();
            }
        });
        (url, rx)
    }

    fn settings(url: &str, scope: Option<&str>) -> OAuthSettings {
        OAuthSettings {
            token_endpoint: url.to_owned(),
            scope: scope.map(str::to_owned),
            extensions: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_token_is_fetched_with_basic_auth_and_cached_until_80_percent_of_its_life() {
        let (url, requests) = endpoint(vec![
            (
                200,
                r#"{"access_token":"first","expires_in":"3","token_type":"Bearer"}"#.into(),
            ),
            (200, r#"{"access_token":"second","expires_in":600}"#.into()),
        ]);
        let s = settings(&url, Some("kafka read"));
        let secret = Secret("s3cr:t".into());
        let (t, fresh) = token(&s, "mirror", &secret, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(fresh);
        assert_eq!(t.expose(), "first");
        let request = requests.recv().unwrap();
        assert!(request.starts_with("POST /token "), "{request}");
        let basic = base64::engine::general_purpose::STANDARD.encode("mirror:s3cr:t");
        assert!(request.contains(&format!("Basic {basic}")), "{request}");
        assert!(
            request.ends_with("grant_type=client_credentials&scope=kafka+read"),
            "{request}"
        );
        // Within 80 % of its 3 s: the same token, no request.
        let (again, fresh) = token(&s, "mirror", &secret, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!fresh);
        assert_eq!(again.expose(), "first");
        assert!(requests.try_recv().is_err());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (renewed, _) = token(&s, "mirror", &secret, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(renewed.expose(), "second");
        assert!(cached_lifetime(&s, "mirror").unwrap() > Duration::from_secs(590));
    }

    #[tokio::test]
    async fn a_refusal_names_the_endpoint_and_the_client_never_the_secret() {
        let (url, _requests) = endpoint(vec![(
            401,
            r#"{"error":"invalid_client","error_description":"bad secret"}"#.into(),
        )]);
        let e = token(
            &settings(&url, None),
            "mirror",
            &Secret("hunter2".into()),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&url) && e.contains("mirror") && e.contains("HTTP 401"),
            "{e}"
        );
        assert!(e.contains("invalid_client: bad secret"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[tokio::test]
    async fn a_busy_endpoint_is_asked_again_later_not_a_refusal() {
        let (url, _requests) = endpoint(vec![(503, "<html>down</html>".into())]);
        let e = token(
            &settings(&url, Some("busy")),
            "mirror",
            &Secret("hunter2".into()),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, OAuthError::Busy { status: 503, .. }), "{e}");
        assert!(e.to_string().contains("asking again later"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_and_an_answer_without_a_token_are_named() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/token", l.local_addr().unwrap())
        };
        let e = token(
            &settings(&closed, None),
            "c",
            &Secret("x".into()),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, OAuthError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains(&closed), "{e}");
        let (url, _requests) = endpoint(vec![(200, r#"{"token_type":"Bearer"}"#.into())]);
        let e = token(
            &settings(&url, Some("other")),
            "c",
            &Secret("x".into()),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("no access_token"), "{e}");
    }
}
