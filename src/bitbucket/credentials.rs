//! Bitbucket credentials, from the environment only, wrapped so they never print.

use secrecy::SecretString;

/// Where the OAuth client-credentials grant is sent by default.
pub const DEFAULT_OAUTH_TOKEN_URL: &str = "https://bitbucket.org/site/oauth2/access_token";

/// How bbfleet authenticates to the Bitbucket REST API.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Atlassian API token: Basic `email:token`.
    ApiToken {
        /// Atlassian account email.
        email: String,
        /// The API token.
        token: SecretString,
    },
    /// Repository, project or workspace access token: Bearer.
    AccessToken(SecretString),
    /// OAuth consumer, client-credentials grant.
    OAuth {
        /// Consumer key.
        client_id: String,
        /// Consumer secret.
        client_secret: SecretString,
        /// Token endpoint.
        token_url: String,
    },
}

/// The environment does not hold one usable set of credentials.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    /// Nothing set.
    #[error(
        "no Bitbucket credentials in the environment: set BITBUCKET_EMAIL and BITBUCKET_API_TOKEN (API token), \
         or BITBUCKET_ACCESS_TOKEN (access token), or BITBUCKET_OAUTH_CLIENT_ID and BITBUCKET_OAUTH_CLIENT_SECRET (OAuth consumer)"
    )]
    Missing,
    /// Half of a pair.
    #[error("{set} is set but {missing} is not: both are needed")]
    Incomplete {
        /// The variable that is set.
        set: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// Two modes at once.
    #[error("conflicting Bitbucket credentials: {0} are set; keep exactly one kind")]
    Conflict(String),
    /// Set but empty.
    #[error("{0} is set but empty")]
    Empty(&'static str),
    /// Bad token URL.
    #[error("BITBUCKET_OAUTH_TOKEN_URL: {0}")]
    TokenUrl(String),
}

impl Credentials {
    /// Reads credentials through `get` (the process environment in production).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Credentials, CredentialsError> {
        let var = |name: &'static str| -> Result<Option<String>, CredentialsError> {
            match get(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Err(CredentialsError::Empty(name)),
                Some(v) => Ok(Some(v.trim().to_owned())),
            }
        };
        let pair = |a: &'static str,
                    b: &'static str|
         -> Result<Option<(String, String)>, CredentialsError> {
            match (var(a)?, var(b)?) {
                (Some(x), Some(y)) => Ok(Some((x, y))),
                (None, None) => Ok(None),
                (Some(_), None) => Err(CredentialsError::Incomplete { set: a, missing: b }),
                (None, Some(_)) => Err(CredentialsError::Incomplete { set: b, missing: a }),
            }
        };
        let api = pair("BITBUCKET_EMAIL", "BITBUCKET_API_TOKEN")?;
        let access = var("BITBUCKET_ACCESS_TOKEN")?;
        let oauth = pair("BITBUCKET_OAUTH_CLIENT_ID", "BITBUCKET_OAUTH_CLIENT_SECRET")?;
        let mut set = Vec::new();
        if api.is_some() {
            set.push("BITBUCKET_EMAIL/BITBUCKET_API_TOKEN");
        }
        if access.is_some() {
            set.push("BITBUCKET_ACCESS_TOKEN");
        }
        if oauth.is_some() {
            set.push("BITBUCKET_OAUTH_CLIENT_ID/BITBUCKET_OAUTH_CLIENT_SECRET");
        }
        if set.len() > 1 {
            return Err(CredentialsError::Conflict(set.join(" and ")));
        }
        if let Some((email, token)) = api {
            return Ok(Credentials::ApiToken {
                email,
                token: token.into(),
            });
        }
        if let Some(token) = access {
            return Ok(Credentials::AccessToken(token.into()));
        }
        if let Some((client_id, secret)) = oauth {
            let token_url = var("BITBUCKET_OAUTH_TOKEN_URL")?
                .unwrap_or_else(|| DEFAULT_OAUTH_TOKEN_URL.to_owned());
            crate::config::check_api_url(&token_url).map_err(CredentialsError::TokenUrl)?;
            return Ok(Credentials::OAuth {
                client_id,
                client_secret: secret.into(),
                token_url,
            });
        }
        Err(CredentialsError::Missing)
    }

    /// A short name of the mode, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Credentials::ApiToken { .. } => "API token",
            Credentials::AccessToken(_) => "access token",
            Credentials::OAuth { .. } => "OAuth consumer",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Credentials, CredentialsError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Credentials::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn each_mode_alone_works() {
        let c = env(&[("BITBUCKET_EMAIL", "a@b.c"), ("BITBUCKET_API_TOKEN", "t")]).unwrap();
        assert!(matches!(c, Credentials::ApiToken { ref email, .. } if email == "a@b.c"));
        let c = env(&[("BITBUCKET_ACCESS_TOKEN", "t")]).unwrap();
        assert!(matches!(c, Credentials::AccessToken(ref t) if t.expose_secret() == "t"));
        let c = env(&[
            ("BITBUCKET_OAUTH_CLIENT_ID", "id"),
            ("BITBUCKET_OAUTH_CLIENT_SECRET", "s"),
        ])
        .unwrap();
        assert!(
            matches!(c, Credentials::OAuth { ref token_url, .. } if token_url == DEFAULT_OAUTH_TOKEN_URL)
        );
    }

    #[test]
    fn bad_environments_are_named() {
        assert_eq!(env(&[]).unwrap_err(), CredentialsError::Missing);
        assert_eq!(
            env(&[("BITBUCKET_EMAIL", "a@b.c")]).unwrap_err(),
            CredentialsError::Incomplete {
                set: "BITBUCKET_EMAIL",
                missing: "BITBUCKET_API_TOKEN"
            }
        );
        assert!(matches!(
            env(&[
                ("BITBUCKET_ACCESS_TOKEN", "t"),
                ("BITBUCKET_OAUTH_CLIENT_ID", "i"),
                ("BITBUCKET_OAUTH_CLIENT_SECRET", "s")
            ]),
            Err(CredentialsError::Conflict(_))
        ));
        assert_eq!(
            env(&[("BITBUCKET_ACCESS_TOKEN", " ")]).unwrap_err(),
            CredentialsError::Empty("BITBUCKET_ACCESS_TOKEN")
        );
        assert!(matches!(
            env(&[
                ("BITBUCKET_OAUTH_CLIENT_ID", "i"),
                ("BITBUCKET_OAUTH_CLIENT_SECRET", "s"),
                ("BITBUCKET_OAUTH_TOKEN_URL", "http://evil.example/t")
            ]),
            Err(CredentialsError::TokenUrl(_))
        ));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = env(&[
            ("BITBUCKET_OAUTH_CLIENT_ID", "id"),
            ("BITBUCKET_OAUTH_CLIENT_SECRET", "canary-secret-123"),
        ])
        .unwrap();
        assert!(!format!("{c:?}").contains("canary-secret-123"));
    }
}
