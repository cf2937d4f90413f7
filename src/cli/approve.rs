//! How a writing command runs its plan: shown, approved, re-planned under the fleet lock,
//! then executed with its outcome printed.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use super::args::LockTimeout;
use super::context::{Context, Remote};
use super::CliError;
use crate::config::Config;
use crate::execute::Executor;
use crate::plan::{Action, Desired, Plan};
use crate::world::Observed;

/// A plan with what it was computed from (`desired` is `None` for destroy).
pub(super) type Planned = (Plan, Observed, Option<Desired>);

/// How a writing command approves and runs its plan.
pub(super) struct Approval {
    /// Run without asking.
    pub auto_approve: bool,
    /// `apply`, `destroy`, `autoscale`: recorded in the lock.
    pub command: &'static str,
    /// How long to wait for the fleet lock.
    pub lock: LockTimeout,
    /// Calls in flight at once.
    pub concurrency: usize,
}

/// Plans with `planner` without the lock (so a no-op run writes nothing), shows and
/// approves that plan, then, holding the fleet lock, plans again and executes what is
/// left. A plan that changed while waiting is refused after an interactive approval, and
/// shown and run with --auto-approve.
pub(super) async fn apply_locked<F, Fut>(
    ctx: &Context<'_>,
    remote: &Remote,
    planner: F,
    how: &Approval,
) -> Result<ExitCode, CliError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Planned, CliError>>,
{
    let out = ctx.out;
    let (approved, _, _) = planner().await?;
    if approved.is_empty() {
        out.plan(&approved)?;
        return Ok(ExitCode::SUCCESS);
    }
    out.plan_text(&approved);
    confirm(how.auto_approve)?;
    with_lock(ctx.config, &remote.aws.ssm, how.command, &how.lock, async {
        let (plan, observed, desired) = planner().await?;
        let outcome = replanned(&approved, &plan, how.auto_approve);
        let changed =
            || "\nThe fleet changed while waiting for the lock; planned again:\n\n".to_owned();
        match outcome {
            Replanned::Same => {}
            Replanned::Refused => {
                return Err(CliError::Refused(
                    "the world changed while waiting for the lock; nothing was changed; run again"
                        .to_owned(),
                ))
            }
            Replanned::NothingLeft => {
                out.text(changed);
                out.plan(&plan)?;
                return Ok(ExitCode::SUCCESS);
            }
            Replanned::Changed => {
                out.text(changed);
                out.plan_text(&plan);
            }
        }
        execute(
            ctx,
            remote,
            &plan,
            &observed,
            desired.as_ref(),
            how.concurrency,
        )
        .await
    })
    .await
}

/// The plan made again under the lock, against the approved one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replanned {
    /// Unchanged: run it.
    Same,
    /// Someone else did it all: nothing to run.
    NothingLeft,
    /// Different, and --auto-approve: show it and run it.
    Changed,
    /// Different after a human approved the old one: refuse.
    Refused,
}

fn replanned(approved: &Plan, now: &Plan, auto_approve: bool) -> Replanned {
    if now == approved {
        Replanned::Same
    } else if now.is_empty() {
        Replanned::NothingLeft
    } else if auto_approve {
        Replanned::Changed
    } else {
        Replanned::Refused
    }
}

tokio::task_local! {
    /// The fence of the lock [`with_lock`] holds, for [`execute`] within its work (so the
    /// callers' futures need not carry it).
    static FENCE: crate::lock::Fence;
}

/// Runs `work` holding the fleet lock (renewed while it runs) and releases it afterwards,
/// also when `work` fails; the executor inside `work` checks the lock's fence before each
/// batch. `destroy`, once its work succeeded, deletes the lock's generations too. A crash
/// leaves the lock: the next run finds it stale.
pub(super) async fn with_lock<T>(
    config: &Config,
    ssm: &aws_sdk_ssm::Client,
    command: &str,
    timeout: &LockTimeout,
    work: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    let mut held = crate::lock::acquire(
        ssm,
        &config.name,
        command,
        timeout.duration,
        &timeout.text,
        |event| match event {
            crate::lock::Event::Waiting(holder) => eprintln!(
                "Waiting for the fleet lock (up to {}): held by {holder}",
                timeout.text
            ),
            crate::lock::Event::TakingOver { holder, reason } => {
                eprintln!("Taking over the stale fleet lock of {holder}: {reason}")
            }
        },
    )
    .await?;
    let fence = held.fence();
    let result = held.guard(FENCE.scope(fence.clone(), work)).await?;
    if fence.check().is_err() {
        // Past the deadline (or taken over) nothing is written, not even the release: the
        // lock expires by itself a safety margin later. The work's error says why.
        return result;
    }
    let released = if command == "destroy" && result.is_ok() {
        held.release_and_clear().await
    } else {
        held.release().await
    };
    if let Err(e) = released {
        // The work is done (or failed on its own); the lock expires by itself.
        eprintln!("warning: {e}");
    }
    result
}

/// Asks for `yes` on a terminal unless auto-approved; refuses without a terminal.
fn confirm(auto_approve: bool) -> Result<(), CliError> {
    if auto_approve {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Refused(
            "refusing to change anything without confirmation: standard input is not a terminal; pass --auto-approve".to_owned(),
        ));
    }
    eprint!("\nDo you want to perform these actions?\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        return Err(CliError::Refused(
            "apply cancelled: nothing was changed".to_owned(),
        ));
    }
    Ok(())
}

/// Executes an approved, non-empty plan and prints the outcome.
pub(super) async fn execute(
    ctx: &Context<'_>,
    remote: &Remote,
    plan: &Plan,
    observed: &Observed,
    desired: Option<&Desired>,
    concurrency: usize,
) -> Result<ExitCode, CliError> {
    let out = ctx.out;
    let executor = Executor {
        config: ctx.config,
        aws: &remote.aws,
        fleet_api: remote.fleet_api.as_ref(),
        bitbucket: &remote.bitbucket,
        observed,
        desired,
        concurrency,
        fence: FENCE.try_with(Clone::clone).ok(),
    };
    let on_done = |action: &Action, detail: &str| {
        let (kind, name, _) = action.describe();
        tracing::info!(kind, %name, detail, "done");
        out.progress(|| format!("  done: {} {name}: {detail}", kind.replace('_', " ")));
    };
    executor.execute(plan, &on_done).await?;
    let s = plan.summary();
    let verb = if desired.is_some() {
        "Apply"
    } else {
        "Destroy"
    };
    out.result(
        &serde_json::json!({"plan": plan.view(), "applied": true}),
        || {
            format!(
                "\n{verb} complete! Resources: {} added, {} changed, {} destroyed.\n",
                s.add, s.change, s.destroy
            )
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(keys: &[&str]) -> Plan {
        Plan {
            fleet: "ci".to_owned(),
            capacity: None,
            actions: keys
                .iter()
                .map(|k| Action::CreateKey {
                    alias: (*k).to_owned(),
                })
                .collect(),
            warnings: Vec::new(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn a_plan_changed_under_the_lock_is_refused_only_after_a_human_approval() {
        let approved = plan(&["alias/a"]);
        for auto in [true, false] {
            assert_eq!(
                replanned(&approved, &plan(&["alias/a"]), auto),
                Replanned::Same
            );
            assert_eq!(
                replanned(&approved, &plan(&[]), auto),
                Replanned::NothingLeft
            );
        }
        let other = plan(&["alias/b"]);
        assert_eq!(replanned(&approved, &other, true), Replanned::Changed);
        assert_eq!(replanned(&approved, &other, false), Replanned::Refused);
    }
}
