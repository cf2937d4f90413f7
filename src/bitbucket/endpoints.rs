//! The calls: workspace and repository lookups, and listing, reading, registering,
//! updating, disabling or enabling, and deleting runners.

use reqwest::Method;
use serde::Deserialize;
use url::Url;

use super::model::CreatedRaw;
use super::retry::{Failure, Replay};
use super::transport::{parse, Body, Request};
use super::{Bitbucket, BitbucketError, CreatedRunner, Owner, Runner, Scope};

/// Pages followed at most in one listing (100 runners per page: far above the 100-runner limit).
const MAX_PAGES: usize = 50;
/// Runners per page asked for (Bitbucket's maximum `pagelen`).
const PAGELEN: usize = 100;

#[derive(Debug, Deserialize)]
struct Page<T> {
    values: Vec<T>,
    next: Option<String>,
}

/// A runner registered by a create whose answer was lost: it never connected (nobody has
/// its secret, so Bitbucket still reports it `UNREGISTERED`, the status of a runner that
/// has never connected), runs no step, and was not there before the create.
fn is_unanswered_create(r: &Runner, name: &str, existing: &[crate::world::Runner]) -> bool {
    let bare = crate::names::bare_uuid(&r.uuid);
    r.name == name
        && !r.is_busy()
        && matches!(r.status(), "UNREGISTERED" | "UNKNOWN")
        && !existing
            .iter()
            .any(|e| crate::names::bare_uuid(&e.uuid) == bare)
}

impl Bitbucket {
    fn runners_segments(scope: &Scope) -> Vec<&str> {
        match &scope.repository {
            Some(repo) => vec![
                "repositories",
                &scope.workspace,
                repo,
                "pipelines-config",
                "runners",
            ],
            None => vec![
                "workspaces",
                &scope.workspace,
                "pipelines-config",
                "runners",
            ],
        }
    }

    /// The path of one runner: the scope's runners, then the braced UUID.
    fn runner_segments<'a>(scope: &'a Scope, braced: &'a str) -> Vec<&'a str> {
        let mut segments = Self::runners_segments(scope);
        segments.push(braced);
        segments
    }

    /// Looks up a workspace (slug or `{uuid}`).
    pub async fn workspace(&self, workspace: &str) -> Result<Owner, BitbucketError> {
        let url = self.url(&["workspaces", workspace]);
        self.json(
            Method::GET,
            url,
            Body::None,
            &format!("workspace {workspace}"),
            "GET workspace",
        )
        .await
    }

    /// Looks up a repository.
    pub async fn repository(
        &self,
        workspace: &str,
        repository: &str,
    ) -> Result<Owner, BitbucketError> {
        let url = self.url(&["repositories", workspace, repository]);
        self.json(
            Method::GET,
            url,
            Body::None,
            &format!("repository {workspace}/{repository}"),
            "GET repository",
        )
        .await
    }

    /// Every runner of the scope, following `next` links.
    pub async fn list_runners(&self, scope: &Scope) -> Result<Vec<Runner>, BitbucketError> {
        let mut url = self.url(&Self::runners_segments(scope));
        url.query_pairs_mut()
            .append_pair("pagelen", &PAGELEN.to_string());
        let mut seen = std::collections::HashSet::new();
        let mut runners = Vec::new();
        for _ in 0..MAX_PAGES {
            if !seen.insert(url.to_string()) {
                return Err(BitbucketError::InvalidResponse {
                    call: format!("GET {}", url.path()),
                    message: "the `next` link points to a page already read (pagination loop)"
                        .to_owned(),
                });
            }
            let page: Page<Runner> = self
                .json(
                    Method::GET,
                    url.clone(),
                    Body::None,
                    &scope.to_string(),
                    "GET runners",
                )
                .await?;
            if page.values.len() > PAGELEN {
                return Err(BitbucketError::InvalidResponse {
                    call: format!("GET {}", url.path()),
                    message: format!(
                        "a page holds {} runners, more than the {PAGELEN} asked for",
                        page.values.len()
                    ),
                });
            }
            runners.extend(page.values);
            match page.next {
                None => return Ok(runners),
                Some(next) => url = self.same_origin(&next, &url)?,
            }
        }
        Err(BitbucketError::InvalidResponse {
            call: format!("GET {}", url.path()),
            message: format!("more than {MAX_PAGES} pages of runners"),
        })
    }

    /// A `next` link, only if it stays on the API's origin (credentials go with it).
    fn same_origin(&self, next: &str, current: &Url) -> Result<Url, BitbucketError> {
        let parsed = current
            .join(next)
            .map_err(|e| BitbucketError::InvalidResponse {
                call: format!("GET {}", current.path()),
                message: format!("the `next` link is not a URL: {e}"),
            })?;
        if parsed.origin() != self.base.origin() {
            return Err(BitbucketError::InvalidResponse {
                call: format!("GET {}", current.path()),
                message: format!(
                    "the `next` link leaves the API's origin ({}); not following it with credentials",
                    parsed.origin().ascii_serialization()
                ),
            });
        }
        Ok(parsed)
    }

    /// Registers a runner. The returned secret exists only here: store it at once.
    ///
    /// When an attempt may have registered the runner without its answer arriving (a
    /// 5xx, a timeout, a connection lost after sending), the scope's runners are listed and
    /// every runner named `name` that such an attempt registered is deleted before the
    /// next attempt, so at most one runner of the name is left, the one returned. Runners
    /// in `existing` (the caller's listing from before), busy or connected runners are
    /// never taken for one. Bitbucket does not require runner names to be unique in a
    /// workspace or repository, which is why the name alone cannot prevent a duplicate.
    pub async fn create_runner(
        &self,
        scope: &Scope,
        name: &str,
        labels: &[String],
        existing: &[crate::world::Runner],
    ) -> Result<CreatedRunner, BitbucketError> {
        let body = serde_json::json!({ "name": name, "labels": labels });
        let what = scope.to_string();
        let req = Request {
            method: Method::POST,
            url: self.url(&Self::runners_segments(scope)),
            body: Body::Json(&body),
            what: &what,
            op: "POST runner",
        };
        let mut used = 0;
        // Bounded: every pass uses at least one more of `max_attempts` attempts.
        loop {
            match self.exchange(&req, used, Replay::Unsafe).await {
                Ok(bytes) => {
                    return parse::<CreatedRaw>(&req.call(), false, &bytes)?.into_created()
                }
                Err(Failure::Failed(e)) => return Err(runner_limit(e, scope)),
                Err(Failure::Unanswered { attempts, lost }) => {
                    // Also after the last attempt: no runner without its secret is left.
                    self.delete_unanswered(scope, name, existing)
                        .await
                        .map_err(|e| unconfirmed(scope, name, &lost, e))?;
                    if attempts >= self.retry.max_attempts {
                        return Err(BitbucketError::Exhausted {
                            call: req.call(),
                            attempts,
                            last: lost,
                        });
                    }
                    used = attempts;
                }
            }
        }
    }

    /// Deletes the runners named `name` that a create registered without its answer
    /// arriving (see [`is_unanswered_create`]); returns how many.
    async fn delete_unanswered(
        &self,
        scope: &Scope,
        name: &str,
        existing: &[crate::world::Runner],
    ) -> Result<usize, BitbucketError> {
        let runners = self.list_runners(scope).await?;
        let mut deleted = 0;
        for r in runners
            .iter()
            .filter(|r| is_unanswered_create(r, name, existing))
        {
            if self.delete_runner(scope, &r.uuid).await? {
                deleted += 1;
                tracing::warn!(runner = %r.uuid, %name, "Bitbucket registered a runner but its answer was lost (nobody has its secret): deleted it before registering again");
            }
        }
        Ok(deleted)
    }

    /// Changes a runner's name and labels.
    pub async fn update_runner(
        &self,
        scope: &Scope,
        uuid: &str,
        name: &str,
        labels: &[String],
    ) -> Result<Runner, BitbucketError> {
        let braced = crate::names::braced_uuid(uuid);
        let body = serde_json::json!({ "name": name, "labels": labels });
        self.json(
            Method::PUT,
            self.url(&Self::runner_segments(scope, &braced)),
            Body::Json(&body),
            &format!("runner {braced}"),
            "PUT runner",
        )
        .await
    }

    /// Deletes a runner; `Ok(false)` if it was already gone.
    pub async fn delete_runner(&self, scope: &Scope, uuid: &str) -> Result<bool, BitbucketError> {
        let braced = crate::names::braced_uuid(uuid);
        let url = self.url(&Self::runner_segments(scope, &braced));
        let sent = self
            .send(
                Method::DELETE,
                url,
                Body::None,
                &format!("runner {braced}"),
                "DELETE runner",
            )
            .await;
        found(sent)
    }

    /// One runner, as `GET /2.0/…/runners/{uuid}` answers it; `None` if it is gone (404).
    pub async fn get_runner(
        &self,
        scope: &Scope,
        uuid: &str,
    ) -> Result<Option<Runner>, BitbucketError> {
        let braced = crate::names::braced_uuid(uuid);
        let url = self.url(&Self::runner_segments(scope, &braced));
        match self
            .json(
                Method::GET,
                url,
                Body::None,
                &format!("runner {braced}"),
                "GET runner",
            )
            .await
        {
            Ok(runner) => Ok(Some(runner)),
            Err(BitbucketError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Disables a runner (it takes no new step; a step it runs finishes) or enables it
    /// again: `PUT /internal/…/runners/{uuid}/state` with `{"status": "DISABLED"}` or
    /// `{"status": "ENABLED"}`, the undocumented endpoint Atlassian's own autoscaler uses
    /// to drain a runner before deleting it (BITBUCKET_API.md §2.4, §2.6; the public
    /// `/2.0` API has no way to disable a runner). The internal base is the configured one
    /// with its last path segment replaced by `internal` (`…/2.0` → `…/internal`; a proxy's
    /// `https://proxy/bitbucket/v2` → `https://proxy/bitbucket/internal`).
    /// Setting a state is idempotent, so the PUT is retried like any GET.
    ///
    /// `Ok(false)` when the runner is gone. A 404 is taken for that only once
    /// `GET /2.0/…/runners/{uuid}` confirms it: should Bitbucket move or drop the
    /// internal endpoint, its 404 must not pass for a deleted runner (the caller would go
    /// on to end the host of a runner that may still take steps), so a runner that still
    /// exists makes that 404 an [`BitbucketError::Unexpected`] error.
    pub async fn set_runner_enabled(
        &self,
        scope: &Scope,
        uuid: &str,
        enabled: bool,
    ) -> Result<bool, BitbucketError> {
        let braced = crate::names::braced_uuid(uuid);
        let mut segments = Self::runner_segments(scope, &braced);
        segments.push("state");
        let url = self.internal_url(&segments);
        let call = format!("PUT {}", url.path());
        let status = if enabled { "ENABLED" } else { "DISABLED" };
        let body = serde_json::json!({ "status": status });
        let what = format!("runner {braced}");
        let sent = self
            .send(
                Method::PUT,
                url,
                Body::Json(&body),
                &what,
                "PUT runner state",
            )
            .await;
        if found(sent)? {
            return Ok(true);
        }
        match self.get_runner(scope, &braced).await? {
            None => Ok(false),
            Some(_) => Err(BitbucketError::Unexpected {
                call,
                status: 404,
                message: format!(
                    "Bitbucket's internal runner state endpoint has no {what}, which GET /2.0 still lists (the undocumented endpoint may have moved); the runner was not {}",
                    if enabled { "enabled" } else { "disabled" }
                ),
            }),
        }
    }
}

/// The answer to a call on one runner: `false` when the runner is gone (404).
fn found(sent: Result<Vec<u8>, BitbucketError>) -> Result<bool, BitbucketError> {
    match sent {
        Ok(_) => Ok(true),
        Err(BitbucketError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A create's failure: a 400 that speaks of a limit is the scope's runner limit.
fn runner_limit(e: BitbucketError, scope: &Scope) -> BitbucketError {
    match e {
        BitbucketError::BadRequest { message, .. }
            if message.to_ascii_lowercase().contains("limit") =>
        {
            BitbucketError::RunnerLimit {
                scope: scope.to_string(),
                message,
            }
        }
        e => e,
    }
}

/// A create whose answer was `lost`, and the check for a runner it registered failed.
fn unconfirmed(scope: &Scope, name: &str, lost: &str, source: BitbucketError) -> BitbucketError {
    BitbucketError::Unconfirmed {
        name: name.to_owned(),
        scope: scope.to_string(),
        lost: lost.to_owned(),
        source: Box::new(source),
    }
}
