//! An OAuth 2 identity provider on loopback, for the OAUTHBEARER tests: a token endpoint
//! (the client-credentials grant, the client's id and secret in HTTP Basic
//! authentication) that issues RS256-signed JWTs, and the JWKS that Kafka's broker-side
//! validator checks them against. The signing key is made for each run (openssl).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

const KID: &str = "kafka-direct-test";
/// The audience of the tokens, which the broker is told to expect.
pub const AUDIENCE: &str = "kafka";

pub struct Oidc {
    pub port: u16,
    /// Tokens issued so far.
    pub issued: Arc<AtomicUsize>,
    /// Token requests refused (a wrong client id or secret).
    pub refused: Arc<AtomicUsize>,
}

struct Provider {
    key: ring::signature::RsaKeyPair,
    client_id: String,
    secret: String,
    lifetime: Duration,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl Oidc {
    /// Serves tokens lasting `lifetime` to `client_id` with `secret`.
    pub fn start(client_id: &str, secret: &str, lifetime: Duration) -> Self {
        let der = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
            ])
            .output()
            .expect("openssl runs");
        assert!(der.status.success(), "openssl genpkey failed");
        // openssl writes the DER form as PKCS#1.
        let key = ring::signature::RsaKeyPair::from_der(&der.stdout).expect("a PKCS#1 RSA key");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let provider = Arc::new(Provider {
            key,
            client_id: client_id.to_owned(),
            secret: secret.to_owned(),
            lifetime,
            issued: issued.clone(),
            refused: refused.clone(),
        });
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let provider = provider.clone();
                std::thread::spawn(move || provider.serve(stream));
            }
        });
        Self {
            port,
            issued,
            refused,
        }
    }

    pub fn token_url(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks", self.port)
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Provider {
    fn serve(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let (mut length, mut authorization) = (0usize, String::new());
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("authorization:") {
                authorization = header["authorization:".len()..].trim().to_owned();
            }
        }
        let mut body = vec![0u8; length];
        let _ = reader.read_exact(&mut body);
        let (status, answer) = match (method.as_str(), path.as_str()) {
            ("GET", "/jwks") => (200, self.jwks()),
            ("POST", "/token") => self.token(&authorization, &String::from_utf8_lossy(&body)),
            _ => (404, r#"{"error":"not_found"}"#.to_owned()),
        };
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            if status == 200 { "OK" } else { "Error" },
            answer.len()
        );
    }

    fn jwks(&self) -> String {
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(self.key.public());
        serde_json::json!({
            "keys": [{
                "kty": "RSA",
                "kid": KID,
                "use": "sig",
                "alg": "RS256",
                "n": b64(&public.n),
                "e": b64(&public.e),
            }]
        })
        .to_string()
    }

    fn token(&self, authorization: &str, body: &str) -> (u16, String) {
        let expected = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.client_id, self.secret));
        let grant = body
            .split('&')
            .any(|p| p == "grant_type=client_credentials");
        if authorization != format!("Basic {expected}") || !grant {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return (
                401,
                r#"{"error":"invalid_client","error_description":"unknown client or wrong secret"}"#
                    .to_owned(),
            );
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": KID});
        let claims = serde_json::json!({
            "sub": self.client_id,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime.as_secs(),
            "scope": "kafka",
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .expect("RS256 signs");
        self.issued.fetch_add(1, Ordering::SeqCst);
        let jwt = format!("{signing_input}.{}", b64(&signature));
        (
            200,
            serde_json::json!({
                "access_token": jwt,
                "token_type": "Bearer",
                "expires_in": self.lifetime.as_secs(),
            })
            .to_string(),
        )
    }
}
