//! Signing requests: Basic for API tokens, Bearer for access tokens, and for an OAuth
//! consumer a Bearer access token from the client-credentials grant, kept until shortly
//! before it expires.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::retry::{Replay, Step, Wait};
use super::transport::{excerpt, read_limited};
use super::{Bitbucket, BitbucketError, Credentials};
use crate::stats::CallKind;

/// The OAuth access token of a client, once it has one.
#[derive(Default)]
pub(super) struct TokenCache(tokio::sync::Mutex<Option<CachedToken>>);

struct CachedToken {
    token: SecretString,
    renew_at: Instant,
}

impl TokenCache {
    /// Drops the token: the next request gets a new one.
    pub(super) async fn forget(&self) {
        *self.0.lock().await = None;
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// An OAuth consumer, as the token endpoint knows it.
struct Consumer<'a> {
    client_id: &'a str,
    client_secret: &'a SecretString,
    token_url: &'a str,
}

impl Bitbucket {
    /// `req` with the credentials it needs.
    pub(super) async fn auth(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, BitbucketError> {
        Ok(match &self.credentials {
            Credentials::ApiToken { email, token } => {
                req.basic_auth(email, Some(token.expose_secret()))
            }
            Credentials::AccessToken(token) => req.bearer_auth(token.expose_secret()),
            Credentials::OAuth { .. } => {
                let token = self.oauth_token().await?;
                req.bearer_auth(token.expose_secret())
            }
        })
    }

    /// The OAuth access token: the cached one, or a new one from the token endpoint (with
    /// retries; concurrent requests wait for the one token request).
    async fn oauth_token(&self) -> Result<SecretString, BitbucketError> {
        let Credentials::OAuth {
            client_id,
            client_secret,
            token_url,
        } = &self.credentials
        else {
            return Err(BitbucketError::Client("not an OAuth client".to_owned()));
        };
        let consumer = Consumer {
            client_id,
            client_secret,
            token_url,
        };
        let mut cached = self.token.0.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| Instant::now() < c.renew_at) {
            return Ok(c.token.clone());
        }
        let call = format!("POST {token_url}");
        let bytes = self
            .retried(&call, 0, Replay::Safe, |attempt| {
                self.token_attempt(&consumer, &call, attempt)
            })
            .await
            .map_err(|f| f.into_error(call.clone()))?;
        let parsed: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| BitbucketError::InvalidResponse {
                call: call.clone(),
                message: format!("token response without access_token: {e}"),
            })?;
        // Renew a minute early, and never trust a lifetime below two minutes.
        let lifetime = parsed.expires_in.unwrap_or(3600).max(120);
        *cached = Some(CachedToken {
            token: parsed.access_token.clone(),
            renew_at: Instant::now() + Duration::from_secs(lifetime - 60),
        });
        Ok(parsed.access_token)
    }

    /// One token request; 429s, 5xx and transport errors are retried after the back-off
    /// (not after the last attempt), any other refusal means the consumer is not accepted.
    async fn token_attempt(
        &self,
        consumer: &Consumer<'_>,
        call: &str,
        attempt: u32,
    ) -> Step<Vec<u8>> {
        self.stats
            .record("bitbucket", "POST oauth2/access_token", CallKind::Read);
        let sent = self
            .http
            .post(consumer.token_url)
            .basic_auth(
                consumer.client_id,
                Some(consumer.client_secret.expose_secret()),
            )
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await;
        let wait = Wait::BeforeNext(self.retry.backoff(attempt));
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                if attempt < self.retry.max_attempts {
                    tracing::debug!(error = %e, attempt, "OAuth token request failed; retrying");
                }
                let reached = !e.is_connect();
                let lost = e.without_url().to_string();
                return Step::Retry {
                    wait,
                    lost,
                    reached,
                };
            }
        };
        self.token_reply(call, response, wait).await
    }

    /// What the token endpoint's answer means: the token response, a retry, or a refusal.
    async fn token_reply(
        &self,
        call: &str,
        response: reqwest::Response,
        wait: Wait,
    ) -> Step<Vec<u8>> {
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Step::Retry {
                wait,
                lost: format!("status {status}"),
                reached: status.is_server_error(),
            };
        }
        let bytes = match read_limited(response).await {
            Ok(b) => b,
            Err(message) => {
                return Step::Done(Err(BitbucketError::InvalidResponse {
                    call: call.to_owned(),
                    message,
                }))
            }
        };
        if !status.is_success() {
            return Step::Done(Err(BitbucketError::Unauthorized {
                kind: self.credentials.kind(),
                call: call.to_owned(),
                message: format!(
                    "the OAuth consumer was refused ({status}): {}",
                    excerpt(&bytes)
                ),
            }));
        }
        Step::Done(Ok(bytes))
    }
}
