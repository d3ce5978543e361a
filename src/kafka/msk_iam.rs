//! Amazon MSK's IAM authentication, over OAUTHBEARER (`sasl.oauthbearer.method =
//! aws_msk_iam`): the token is a URL presigned with AWS Signature Version 4, as AWS's
//! signer libraries (`aws-msk-iam-sasl-signer-*`) build it:
//!
//! 1. a GET of `https://kafka.<region>.amazonaws.com/?Action=kafka-cluster:Connect`,
//!    presigned for 900 s for the service `kafka-cluster` (the payload hash that of the
//!    empty body, `host` the one signed header), by the `aws-sigv4` crate;
//! 2. a `User-Agent` query parameter added after signing, and the query written in key
//!    order, form-encoded;
//! 3. the URL in unpadded base64url.
//!
//! Credentials and the region come from the AWS SDK's default chains (`aws-config`):
//! environment, the shared config and credentials files (a profile, with
//! `sasl.oauthbearer.aws.profile`; a `role_arn` there is assumed), web identity (EKS's
//! IRSA), the ECS container endpoint, EC2's instance metadata. A token serves every
//! connection until 80 % of its 900 s has passed, as OAuth tokens do
//! ([`super::oauth`]); brokers end each session at the token's expiry, and connections
//! re-authenticate before ([`super::connection`]).
//!
//! There is no MSK here: the tokens are proven by known-answer tests against AWS's signer
//! for Go (`scripts/msk-iam-known-answer`), not against a broker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;

use super::access::Secret;

/// How long a token is valid (the signers' default, `X-Amz-Expires`).
pub const LIFETIME: Duration = Duration::from_secs(900);

/// The `User-Agent` parameter of kafka-direct's tokens.
pub const USER_AGENT: &str = concat!("kafka-direct/", env!("CARGO_PKG_VERSION"));

/// Where MSK IAM tokens come from (`sasl.oauthbearer.aws.*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MskIamSettings {
    /// `sasl.oauthbearer.aws.region`; else the SDK's region chain (`AWS_REGION`, the
    /// profile's `region`).
    pub region: Option<String>,
    /// `sasl.oauthbearer.aws.profile`; else `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
}

impl MskIamSettings {
    /// How the settings read in messages: the region and profile asked for.
    pub fn describe(&self) -> String {
        format!(
            "AWS IAM (region {}, profile {})",
            self.region.as_deref().unwrap_or("from the AWS chain"),
            self.profile.as_deref().unwrap_or("from the AWS chain")
        )
    }
}

/// Why no token could be built.
#[derive(Debug, thiserror::Error)]
pub enum MskIamError {
    /// Neither the key nor the SDK's chain gives a region.
    #[error("no AWS region for MSK IAM: set sasl.oauthbearer.aws.region, or AWS_REGION")]
    NoRegion,
    /// The SDK's credential chain found no credentials, or failed.
    #[error("no AWS credentials for MSK IAM ({0}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile (sasl.oauthbearer.aws.profile), a web identity (AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE), or run where the instance metadata service answers")]
    NoCredentials(String),
    /// Signing failed.
    #[error("signing the MSK IAM token failed: {0}")]
    Signing(String),
}

impl MskIamError {
    /// Whether asking again later can succeed: credentials from a metadata service or
    /// STS may come back; a missing region will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, MskIamError::NoCredentials(_))
    }
}

/// A token built, and when to build the next one.
struct Cached {
    value: Secret,
    refresh_at: Instant,
    expires_at: Instant,
    /// The region and access key it was signed with, for messages.
    signed_for: String,
}

static TOKENS: Mutex<Option<HashMap<MskIamSettings, Cached>>> = Mutex::new(None);
/// One credential lookup at a time: connections that break together share it.
static BUILDING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cached(settings: &MskIamSettings) -> Option<(Secret, String)> {
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    let t = tokens.as_ref()?.get(settings)?;
    (Instant::now() < t.refresh_at).then(|| (t.value.clone(), t.signed_for.clone()))
}

/// A token: the cached one while less than 80 % of its lifetime has passed, else a new
/// one from fresh credentials. Also returns whether it was just built, and what it was
/// signed for (`region us-east-1, access key AKIA…`).
pub async fn token(settings: &MskIamSettings) -> Result<(Secret, bool, String), MskIamError> {
    if let Some((t, signed_for)) = cached(settings) {
        return Ok((t, false, signed_for));
    }
    let _one_at_a_time = BUILDING.lock().await;
    if let Some((t, signed_for)) = cached(settings) {
        return Ok((t, false, signed_for));
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    let config = loader.load().await;
    let region = config.region().ok_or(MskIamError::NoRegion)?.to_string();
    let provider = config
        .credentials_provider()
        .ok_or_else(|| MskIamError::NoCredentials("no credential provider".into()))?;
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|e| MskIamError::NoCredentials(error_chain(&e)))?;
    let now = SystemTime::now();
    let value = presigned_token(&region, &credentials, now, USER_AGENT)?;
    // Refreshed at 80 % of the token's lifetime, or of what is left of the credentials'.
    let mut lifetime = LIFETIME;
    if let Some(expiry) = credentials.expiry() {
        lifetime = lifetime.min(expiry.duration_since(now).unwrap_or_default());
    }
    let signed_for = format!(
        "region {region}, access key {}",
        credentials.access_key_id()
    );
    tracing::debug!(%signed_for, "MSK IAM token signed");
    let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    tokens.get_or_insert_with(HashMap::new).insert(
        settings.clone(),
        Cached {
            value: Secret(value.clone()),
            refresh_at: Instant::now() + lifetime.mul_f64(0.8),
            expires_at: Instant::now() + lifetime,
            signed_for: signed_for.clone(),
        },
    );
    Ok((Secret(value), true, signed_for))
}

/// What the cached token was signed for, and how long it has left (for `check`).
pub fn cached_token(settings: &MskIamSettings) -> Option<(String, Duration)> {
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    let t = tokens.as_ref()?.get(settings)?;
    Some((
        t.signed_for.clone(),
        t.expires_at.saturating_duration_since(Instant::now()),
    ))
}

/// Drops the cached token (a broker refused it): the next connection signs a new one.
pub fn forget(settings: &MskIamSettings) {
    let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = tokens.as_mut() {
        m.remove(settings);
    }
}

/// An error and its sources, which the SDK's errors keep apart.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The MSK IAM token for `region`, signed with `credentials` at `at` (pure: the
/// known-answer tests give a fixed clock).
pub fn presigned_token(
    region: &str,
    credentials: &Credentials,
    at: SystemTime,
    user_agent: &str,
) -> Result<String, MskIamError> {
    let host = format!("kafka.{region}.amazonaws.com");
    let action = [("Action", "kafka-cluster:Connect")];
    let url = format!("https://{host}/?{}", form_encode(&action));
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(LIFETIME);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("kafka-cluster")
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| MskIamError::Signing(e.to_string()))?
        .into();
    let request = SignableRequest::new(
        "GET",
        url,
        std::iter::once(("host", host.as_str())),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| MskIamError::Signing(e.to_string()))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| MskIamError::Signing(e.to_string()))?
        .into_parts();
    let mut query: Vec<(&str, &str)> = action.to_vec();
    query.extend(instructions.params().iter().map(|(k, v)| (*k, v.as_ref())));
    query.push(("User-Agent", user_agent));
    query.sort_by_key(|(k, _)| *k);
    let signed = format!("https://{host}/?{}", form_encode(&query));
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signed))
}

/// `k=v&k=v`, each side form-encoded: letters, digits and `-_.~` as they are, a space as
/// `+`, every other byte as `%XX` (upper case), as Go's `url.Values.Encode` writes the
/// signers' tokens.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn escape(out: &mut String, s: &str) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        escape(&mut out, k);
        out.push('=');
        escape(&mut out, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-04T05:06:07Z, the clock of the known answers.
    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_360_767)
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    /// Printed by `scripts/msk-iam-known-answer` (`go run .`), which builds tokens with
    /// the AWS SDK for Go's SigV4 signer as AWS's MSK IAM signer for Go does, and checks
    /// itself against that signer.
    const LONG_TERM: &str = "aHR0cHM6Ly9rYWZrYS51cy1lYXN0LTEuYW1hem9uYXdzLmNvbS8_QWN0aW9uPWthZmthLWNsdXN0ZXIlM0FDb25uZWN0JlVzZXItQWdlbnQ9a2Fma2EtZGlyZWN0JTJGMC4xLjAmWC1BbXotQWxnb3JpdGhtPUFXUzQtSE1BQy1TSEEyNTYmWC1BbXotQ3JlZGVudGlhbD1BS0lBSU9TRk9ETk43RVhBTVBMRSUyRjIwMjYxMjA0JTJGdXMtZWFzdC0xJTJGa2Fma2EtY2x1c3RlciUyRmF3czRfcmVxdWVzdCZYLUFtei1EYXRlPTIwMjYxMjA0VDA1MDYwN1omWC1BbXotRXhwaXJlcz05MDAmWC1BbXotU2lnbmF0dXJlPTU5NjNkNTVlY2I3ODU2N2E0NzgxNzc5OTY2ZjUzZjQyYmMyM2VkMDcwOTBiNmE2YzQ3YzQ1NDYyZWNlNDE2ODAmWC1BbXotU2lnbmVkSGVhZGVycz1ob3N0";
    const SESSION: &str = "aHR0cHM6Ly9rYWZrYS5ldS13ZXN0LTEuYW1hem9uYXdzLmNvbS8_QWN0aW9uPWthZmthLWNsdXN0ZXIlM0FDb25uZWN0JlVzZXItQWdlbnQ9a2Fma2EtZGlyZWN0JTJGMC4xLjAmWC1BbXotQWxnb3JpdGhtPUFXUzQtSE1BQy1TSEEyNTYmWC1BbXotQ3JlZGVudGlhbD1BU0lBSU9TRk9ETk43RVhBTVBMRSUyRjIwMjYxMjA0JTJGZXUtd2VzdC0xJTJGa2Fma2EtY2x1c3RlciUyRmF3czRfcmVxdWVzdCZYLUFtei1EYXRlPTIwMjYxMjA0VDA1MDYwN1omWC1BbXotRXhwaXJlcz05MDAmWC1BbXotU2VjdXJpdHktVG9rZW49SVFvSmIzSnBaMmx1WDJWakVYQU1QTEUlMkJ0b2tlbiUyRndpdGglM0RzaWducyZYLUFtei1TaWduYXR1cmU9MDQ2ZjQ2ZTU2MTg2NWRiYjUzZWQ0YjFlMzllNTljNmNlMDAyNjcyZjA2YTkxZGFmOGEzYzliYmQ2Mjk0Njk0MyZYLUFtei1TaWduZWRIZWFkZXJzPWhvc3Q";

    fn decoded(token: &str) -> String {
        use base64::Engine as _;
        String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn long_term_credentials_give_the_signers_token() {
        let credentials = Credentials::new("AKIAIOSFODNN7EXAMPLE", SECRET, None, None, "test");
        let token = presigned_token("us-east-1", &credentials, at(), "kafka-direct/0.1.0").unwrap();
        assert_eq!(decoded(&token), decoded(LONG_TERM));
        assert_eq!(token, LONG_TERM);
    }

    #[test]
    fn session_credentials_sign_their_token_into_the_url() {
        let credentials = Credentials::new(
            "ASIAIOSFODNN7EXAMPLE",
            SECRET,
            Some("IQoJb3JpZ2luX2VjEXAMPLE+token/with=signs".into()),
            None,
            "test",
        );
        let token = presigned_token("eu-west-1", &credentials, at(), "kafka-direct/0.1.0").unwrap();
        assert_eq!(decoded(&token), decoded(SESSION));
        assert_eq!(token, SESSION);
    }

    #[test]
    fn another_clock_region_or_key_gives_another_signature() {
        let credentials = Credentials::new("AKIAIOSFODNN7EXAMPLE", SECRET, None, None, "test");
        let ua = "kafka-direct/0.1.0";
        let base = presigned_token("us-east-1", &credentials, at(), ua).unwrap();
        let later = presigned_token("us-east-1", &credentials, at() + Duration::from_secs(1), ua);
        let elsewhere = presigned_token("us-west-2", &credentials, at(), ua);
        let other = Credentials::new("AKIAIOSFODNN7EXAMPLE", "another", None, None, "test");
        let rekeyed = presigned_token("us-east-1", &other, at(), ua);
        for token in [later, elsewhere, rekeyed] {
            assert_ne!(token.unwrap(), base);
        }
    }

    #[test]
    fn the_url_is_the_connect_action_on_the_regions_endpoint_for_900_s() {
        let credentials = Credentials::new("AKIAIOSFODNN7EXAMPLE", SECRET, None, None, "test");
        let url = decoded(&presigned_token("ap-south-1", &credentials, at(), USER_AGENT).unwrap());
        assert!(
            url.starts_with("https://kafka.ap-south-1.amazonaws.com/?Action=kafka-cluster%3AConnect&User-Agent=kafka-direct%2F"),
            "{url}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261204%2Fap-south-1%2Fkafka-cluster%2Faws4_request",
            "X-Amz-Date=20261204T050607Z",
            "X-Amz-Expires=900",
            "X-Amz-SignedHeaders=host",
        ] {
            assert!(url.contains(part), "{part}: {url}");
        }
        assert!(!url.contains(SECRET) && !url.contains("K7MDENG"), "{url}");
    }

    #[test]
    fn form_encoding_is_gos() {
        assert_eq!(
            form_encode(&[("a b", "x/y+z=~_.-"), ("k", "")]),
            "a+b=x%2Fy%2Bz%3D~_.-&k="
        );
    }
}
