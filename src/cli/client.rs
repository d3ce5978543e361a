//! A small client of the API, for the CLI (`kafka-direct status`, `connectors`,
//! `offsets get`) and the tests.

use std::time::Duration;

use serde_json::Value;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (refused, timed out, not HTTP).
    #[error("cannot reach the kafka-direct API at {url}: {source}; is the service running, and is api.listen this address?")]
    Unreachable {
        /// What was called.
        url: String,
        /// The transport error.
        source: Box<ureq::Error>,
    },
    /// The API answered with an error.
    #[error("{url} answered {status}: {message}")]
    Refused {
        /// What was called.
        url: String,
        /// HTTP status.
        status: u16,
        /// The API's `message` (or the body).
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("{url} answered something that is not JSON: {detail}")]
    NotJson {
        /// What was called.
        url: String,
        /// The parse error.
        detail: String,
    },
}

/// Calls one service's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    /// A client of the API at `base` (`http://host:port`, or `host:port`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        let base = if base.contains("://") {
            base.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Self { agent, base, token }
    }

    /// `method path`: the status and the body, whatever the status.
    pub fn call(&self, method: &str, path: &str) -> Result<(u16, String), ClientError> {
        self.send(method, path, None)
    }

    /// `method path` with a JSON body (PUT, PATCH, POST): the status and the body.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), ClientError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |source| ClientError::Unreachable {
            url: url.clone(),
            source: Box::new(source),
        };
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = match method {
            "GET" | "DELETE" => {
                let mut request = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
            _ => {
                let mut request = match method {
                    "PUT" => self.agent.put(&url),
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                match body {
                    Some(body) => request
                        .header("Content-Type", "application/json")
                        .send(body.to_string()),
                    None => request.send_empty(),
                }
            }
        };
        let mut response = response.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().map_err(unreachable)?;
        Ok((status, body))
    }

    /// `method path` with an optional JSON body, expecting a success; an error status
    /// becomes [`ClientError::Refused`] with the API's message. Returns the body.
    pub fn send_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), ClientError> {
        let (status, text) = self.send(method, path, body)?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(text);
            return Err(ClientError::Refused {
                url: format!("{}{path}", self.base),
                status,
                message,
            });
        }
        Ok((status, text))
    }

    /// `GET path` as JSON ([`ApiClient::send_ok`]).
    pub fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let (_, body) = self.send_ok("GET", path, None)?;
        serde_json::from_str(&body).map_err(|e| ClientError::NotJson {
            url: format!("{}{path}", self.base),
            detail: e.to_string(),
        })
    }
}
