//! The runner's stored command: the `docker container run` command Bitbucket shows for a
//! Linux Docker runner (the "Add runner" dialog of Bitbucket Cloud, Linux Docker), without
//! `-it` (the host's runner agent, a systemd unit, starts it), in a line format the host's
//! bash turns into a root-only `--env-file` and a NUL-separated argv file with builtins
//! only, so no secret ever reaches a process's arguments or environment (docs/design.md,
//! "Credential hand-off"):
//!
//! ```text
//! bbfleet-runner-command 1
//! arg -v
//! arg /tmp:/tmp
//! env OAUTH_CLIENT_SECRET=...
//! arg --name
//! arg runner-...
//! image docker-public.packages.atlassian.com/...:1
//! ```
//!
//! The first line is [`FORMAT`]; then one item a line: `arg WORD` (an option word of
//! `docker container run`, in order), `env NAME=VALUE` (a line of the env file), and last
//! `image IMAGE`. Everything after the first space is the value, verbatim: no quoting, no
//! escapes. A value may hold any character but a control character (a newline would end
//! the line; docker's env file has no way to carry one either).

use secrecy::{ExposeSecret, SecretString};

/// The first line of every stored command: the format and its version.
pub const FORMAT: &str = "bbfleet-runner-command 1";

/// Everything the command needs.
pub struct RunnerCommand<'a> {
    /// Runner image.
    pub image: &'a str,
    /// Workspace `{uuid}`.
    pub account_uuid: &'a str,
    /// Repository `{uuid}`, for repository runners only.
    pub repository_uuid: Option<&'a str>,
    /// Runner `{uuid}`.
    pub runner_uuid: &'a str,
    /// `oauth_client.id`.
    pub client_id: &'a str,
    /// `oauth_client.secret`.
    pub client_secret: &'a SecretString,
}

/// A value the stored format cannot carry. Names the value, never shows it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the runner command's {what} contains a control character (a newline, say), which the \
     stored command cannot carry"
)]
pub struct RenderError {
    /// Which value: `image`, an option, or an environment variable's name.
    pub what: String,
}

/// SSM Standard tier's value limit.
pub const MAX_PARAMETER_BYTES: usize = 4096;

/// The options of `docker container run` before the environment.
const MOUNTS: [&str; 6] = [
    "-v",
    "/tmp:/tmp",
    "-v",
    "/var/run/docker.sock:/var/run/docker.sock",
    "-v",
    "/var/lib/docker/containers:/var/lib/docker/containers:ro",
];

impl RunnerCommand<'_> {
    /// The command in the stored line format (module docs); fails if a value holds a
    /// control character.
    pub fn render(&self) -> Result<SecretString, RenderError> {
        let braced = |u: &str| crate::names::braced_uuid(u);
        let mut env = vec![("ACCOUNT_UUID", braced(self.account_uuid))];
        if let Some(repo) = self.repository_uuid {
            env.push(("REPOSITORY_UUID", braced(repo)));
        }
        env.push(("RUNNER_UUID", braced(self.runner_uuid)));
        env.push(("RUNTIME_PREREQUISITES_ENABLED", "true".to_owned()));
        env.push(("OAUTH_CLIENT_ID", self.client_id.to_owned()));
        env.push((
            "OAUTH_CLIENT_SECRET",
            self.client_secret.expose_secret().to_owned(),
        ));
        env.push(("WORKING_DIRECTORY", "/tmp".to_owned()));
        let name = format!("runner-{}", crate::names::bare_uuid(self.runner_uuid));
        let mut lines = vec![FORMAT.to_owned()];
        for word in MOUNTS {
            lines.push(item("arg", word, word)?);
        }
        for (key, value) in &env {
            lines.push(item("env", key, &format!("{key}={value}"))?);
        }
        lines.push(item("arg", "--name", "--name")?);
        lines.push(item("arg", "the container name", &name)?);
        lines.push(item("image", "image", self.image)?);
        Ok(lines.join("\n").into())
    }
}

/// One line `KIND VALUE`; `what` names the value in the error.
fn item(kind: &str, what: &str, value: &str) -> Result<String, RenderError> {
    if value.chars().any(char::is_control) {
        return Err(RenderError {
            what: what.to_owned(),
        });
    }
    Ok(format!("{kind} {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command<'a>(secret: &'a SecretString, image: &'a str) -> RunnerCommand<'a> {
        RunnerCommand {
            image,
            account_uuid: "{11111111-2222-4333-8444-555555555555}",
            repository_uuid: None,
            runner_uuid: "{AAAAAAAA-BBBB-5CCC-8DDD-EEEEEEEEEEEE}",
            client_id: "AbCd0123",
            client_secret: secret,
        }
    }

    #[test]
    fn workspace_runner_command_matches_bitbucket() {
        let secret: SecretString = "s3cr3t".to_owned().into();
        let cmd = command(&secret, crate::config::DEFAULT_RUNNER_IMAGE);
        assert_eq!(
            cmd.render().expect("renders").expose_secret(),
            "bbfleet-runner-command 1\n\
             arg -v\narg /tmp:/tmp\n\
             arg -v\narg /var/run/docker.sock:/var/run/docker.sock\n\
             arg -v\narg /var/lib/docker/containers:/var/lib/docker/containers:ro\n\
             env ACCOUNT_UUID={11111111-2222-4333-8444-555555555555}\n\
             env RUNNER_UUID={aaaaaaaa-bbbb-5ccc-8ddd-eeeeeeeeeeee}\n\
             env RUNTIME_PREREQUISITES_ENABLED=true\n\
             env OAUTH_CLIENT_ID=AbCd0123\n\
             env OAUTH_CLIENT_SECRET=s3cr3t\n\
             env WORKING_DIRECTORY=/tmp\n\
             arg --name\narg runner-aaaaaaaa-bbbb-5ccc-8ddd-eeeeeeeeeeee\n\
             image docker-public.packages.atlassian.com/sox/atlassian/bitbucket-pipelines-runner:1"
        );
    }

    #[test]
    fn repository_runners_carry_the_repository_and_odd_secrets_stay_verbatim() {
        let secret: SecretString = r#"it's $x "q" \n `y` ; # z "#.to_owned().into();
        let cmd = RunnerCommand {
            image: "img:1",
            account_uuid: "{a}",
            repository_uuid: Some("{b}"),
            runner_uuid: "{c}",
            client_id: "id",
            client_secret: &secret,
        };
        let text = cmd.render().expect("renders").expose_secret().to_owned();
        assert!(
            text.contains("\nenv REPOSITORY_UUID={b}\nenv RUNNER_UUID={c}\n"),
            "{text}"
        );
        let line = format!("\nenv OAUTH_CLIENT_SECRET={}\n", secret.expose_secret());
        assert!(text.contains(&line), "{text}");
    }

    #[test]
    fn a_control_character_in_any_value_is_refused_without_showing_it() {
        for bad in ["two\nlines", "cr\r", "tab\there", "nul\0"] {
            let secret: SecretString = format!("canary-{bad}").into();
            let err = command(&secret, "img:1").render().expect_err(bad);
            assert_eq!(err.what, "OAUTH_CLIENT_SECRET");
            assert!(!err.to_string().contains("canary"), "{err}");
            let fine: SecretString = "ok".to_owned().into();
            let image = format!("img{bad}:1");
            let err = command(&fine, &image).render().expect_err(bad);
            assert_eq!(err.what, "image", "{err}");
        }
    }
}
