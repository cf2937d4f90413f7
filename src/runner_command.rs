//! The `docker container run` command Bitbucket shows for a Linux Docker runner
//! (the "Add runner" dialog of Bitbucket Cloud, Linux Docker), without `-it`: the host's runner agent (a systemd unit) starts it.

use secrecy::{ExposeSecret, SecretString};

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

/// SSM Standard tier's value limit.
pub const MAX_PARAMETER_BYTES: usize = 4096;

impl RunnerCommand<'_> {
    /// The command as one shell line, every value quoted where the shell would need it.
    pub fn render(&self) -> SecretString {
        let braced = |u: &str| crate::names::braced_uuid(u);
        let mut env = vec![format!("ACCOUNT_UUID={}", braced(self.account_uuid))];
        if let Some(repo) = self.repository_uuid {
            env.push(format!("REPOSITORY_UUID={}", braced(repo)));
        }
        env.push(format!("RUNNER_UUID={}", braced(self.runner_uuid)));
        env.push("RUNTIME_PREREQUISITES_ENABLED=true".to_owned());
        env.push(format!("OAUTH_CLIENT_ID={}", self.client_id));
        env.push(format!(
            "OAUTH_CLIENT_SECRET={}",
            self.client_secret.expose_secret()
        ));
        env.push("WORKING_DIRECTORY=/tmp".to_owned());
        let mut words: Vec<String> = [
            "docker",
            "container",
            "run",
            "-v",
            "/tmp:/tmp",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            "/var/lib/docker/containers:/var/lib/docker/containers:ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for e in env {
            words.push("-e".to_owned());
            words.push(quote(&e));
        }
        words.push("--name".to_owned());
        words.push(quote(&format!(
            "runner-{}",
            crate::names::bare_uuid(self.runner_uuid)
        )));
        words.push(quote(self.image));
        words.join(" ").into()
    }
}

/// Single-quotes a word unless it is made only of characters the shell leaves alone.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:=@,+%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_runner_command_matches_bitbucket() {
        let secret: SecretString = "s3cr3t".to_owned().into();
        let cmd = RunnerCommand {
            image: crate::config::DEFAULT_RUNNER_IMAGE,
            account_uuid: "{11111111-2222-4333-8444-555555555555}",
            repository_uuid: None,
            runner_uuid: "{AAAAAAAA-BBBB-5CCC-8DDD-EEEEEEEEEEEE}",
            client_id: "AbCd0123",
            client_secret: &secret,
        };
        assert_eq!(
            cmd.render().expose_secret(),
            "docker container run -v /tmp:/tmp -v /var/run/docker.sock:/var/run/docker.sock \
             -v /var/lib/docker/containers:/var/lib/docker/containers:ro \
             -e 'ACCOUNT_UUID={11111111-2222-4333-8444-555555555555}' \
             -e 'RUNNER_UUID={aaaaaaaa-bbbb-5ccc-8ddd-eeeeeeeeeeee}' \
             -e RUNTIME_PREREQUISITES_ENABLED=true -e OAUTH_CLIENT_ID=AbCd0123 \
             -e OAUTH_CLIENT_SECRET=s3cr3t -e WORKING_DIRECTORY=/tmp \
             --name runner-aaaaaaaa-bbbb-5ccc-8ddd-eeeeeeeeeeee \
             docker-public.packages.atlassian.com/sox/atlassian/bitbucket-pipelines-runner:1"
        );
    }

    #[test]
    fn repository_runners_carry_the_repository_and_odd_secrets_stay_one_word() {
        let secret: SecretString = "it's $x".to_owned().into();
        let cmd = RunnerCommand {
            image: "img:1",
            account_uuid: "{a}",
            repository_uuid: Some("{b}"),
            runner_uuid: "{c}",
            client_id: "id",
            client_secret: &secret,
        };
        let line = cmd.render().expose_secret().to_owned();
        assert!(
            line.contains("-e 'REPOSITORY_UUID={b}' -e 'RUNNER_UUID={c}'"),
            "{line}"
        );
        assert!(
            line.contains(r"-e 'OAUTH_CLIENT_SECRET=it'\''s $x'"),
            "{line}"
        );
    }
}
