//! Executes a plan: actions in order; runs of independent actions of one kind fan out
//! with bounded concurrency. A failure stops new work, lets started calls finish, and
//! reports what was done; the next apply converges from there.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use futures::stream::{self, StreamExt};
use secrecy::SecretString;

use crate::aws::fleet::FleetApi;
use crate::aws::{ec2, kms, ssm, Aws, AwsError};
use crate::bitbucket::{Bitbucket, BitbucketError};
use crate::config::Config;
use crate::names::{self, bare_uuid};
use crate::observe::scope;
use crate::plan::{Action, Batch, Desired, Plan};
use crate::runner_command::{RenderError, RunnerCommand};
use crate::world::{ClaimHolder, FleetTarget, Observed};

/// Default number of calls in flight at once (Bitbucket's hourly budget is the real bound):
/// 100 runners, the most a scope holds, are registered and stored in 4 waves.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// An action failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} failed: {cause}\n{done} of {total} actions were done; the rest were not started. Run the same command again: it re-plans from what exists now and converges.")]
pub struct ExecuteError {
    /// The action, as printed in the plan.
    pub action: String,
    /// Why.
    pub cause: ActionError,
    /// Actions completed.
    pub done: usize,
    /// Actions in the plan.
    pub total: usize,
}

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// Bitbucket.
    #[error(transparent)]
    Bitbucket(#[from] BitbucketError),
    /// AWS.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// A value the stored runner command cannot carry.
    #[error(transparent)]
    RunnerCommand(#[from] RenderError),
    /// The plan needs something an earlier action should have made.
    #[error("{0}")]
    Missing(&'static str),
    /// Not started because another action of its batch failed.
    #[error("not started: an earlier action failed")]
    NotStarted,
    /// Not started because the fleet lock is no longer surely ours.
    #[error("not started: {0}")]
    Fenced(#[from] crate::lock::Fenced),
}

/// Everything an apply or destroy talks to.
pub struct Executor<'a> {
    /// Config.
    pub config: &'a Config,
    /// AWS clients.
    pub aws: &'a Aws,
    /// Fleet API.
    pub fleet_api: &'a dyn FleetApi,
    /// Bitbucket client.
    pub bitbucket: &'a Bitbucket,
    /// What the plan was made from.
    pub observed: &'a Observed,
    /// What apply aims at (`None` for destroy).
    pub desired: Option<&'a Desired>,
    /// Calls in flight at most.
    pub concurrency: usize,
    /// The fleet lock's fence, checked before every batch of writes (`None`: unchecked).
    pub fence: Option<crate::lock::Fence>,
}

/// What earlier actions of the plan made, for later ones.
#[derive(Default)]
struct State {
    key_arn: Option<String>,
    launch_template: Option<(String, i64)>,
    /// Runners (bare uuids) that took a step while being drained: kept, with their hosts.
    reprieved: BTreeSet<String>,
    /// The hosts of reprieved runners: not terminated.
    spared: BTreeSet<String>,
}

impl State {
    /// Whether a claim or command parameter name belongs to a reprieved runner.
    fn concerns_reprieved(&self, name: &str) -> bool {
        self.reprieved
            .iter()
            .any(|u| name.split('/').any(|segment| segment == u))
    }
}

impl State {
    /// What exists before the first action.
    fn observed(observed: &Observed) -> State {
        State {
            key_arn: match &observed.key {
                Some(crate::world::KeyStatus::Usable { arn }) => Some(arn.clone()),
                _ => None,
            },
            launch_template: observed
                .launch_template
                .as_ref()
                .map(|lt| (lt.id.clone(), lt.latest_version)),
            ..State::default()
        }
    }
}

/// The outcome of each action of a batch, by its index in the batch.
type Outcomes = Vec<(usize, Result<String, ActionError>)>;

fn label(a: &Action) -> String {
    let (kind, name, _) = a.describe();
    format!("{} {name}", kind.replace('_', " "))
}

/// The plan cut into runs of consecutive actions that batch together.
fn batches(actions: &[Action]) -> Vec<&[Action]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=actions.len() {
        if i == actions.len() || !actions[start].batches_with(&actions[i]) {
            out.push(&actions[start..i]);
            start = i;
        }
    }
    out
}

impl Executor<'_> {
    /// Runs the plan; `on_done` is told of each finished action with a short result.
    pub async fn execute(
        &self,
        plan: &Plan,
        on_done: &(dyn Fn(&Action, &str) + Sync),
    ) -> Result<usize, ExecuteError> {
        let state = Mutex::new(State::observed(self.observed));
        let total = plan.actions.len();
        let mut done = 0;
        for batch in batches(&plan.actions) {
            if let Some(Err(fenced)) = self.fence.as_ref().map(crate::lock::Fence::check) {
                let (action, cause) = (label(&batch[0]), fenced.into());
                return Err(ExecuteError {
                    action,
                    cause,
                    done,
                    total,
                });
            }
            let mut first_error = None;
            for (k, r) in self.run_batch(batch, &state).await {
                match r {
                    Ok(detail) => {
                        done += 1;
                        on_done(&batch[k], &detail);
                    }
                    Err(ActionError::NotStarted) => {}
                    Err(e) => {
                        first_error.get_or_insert((label(&batch[k]), e));
                    }
                }
            }
            if let Some((action, cause)) = first_error {
                return Err(ExecuteError {
                    action,
                    cause,
                    done,
                    total,
                });
            }
        }
        Ok(done)
    }

    /// A batch: one grouped call for parameter deletions, else a bounded fan-out that
    /// starts nothing new after a failure (started calls finish).
    async fn run_batch(&self, batch: &[Action], state: &Mutex<State>) -> Outcomes {
        if batch[0].traits().batch == Batch::DeleteParameters {
            return self.delete_parameters(batch, state).await;
        }
        let stop = AtomicBool::new(false);
        stream::iter(batch.iter().enumerate())
            .map(|(k, a)| {
                let stop = &stop;
                async move {
                    if stop.load(Ordering::SeqCst) {
                        return (k, Err(ActionError::NotStarted));
                    }
                    let r = self.run(a, state).await;
                    if r.is_err() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    (k, r)
                }
            })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await
    }

    /// One call per ten names rather than one per parameter.
    async fn delete_parameters(&self, batch: &[Action], state: &Mutex<State>) -> Outcomes {
        let names: Vec<String> = batch
            .iter()
            .filter_map(|a| match a {
                Action::DeleteParameter { name, .. }
                | Action::DeleteOrphanParameter { name, .. } => Some(name.clone()),
                _ => None,
            })
            .filter(|n| !lock(state).concerns_reprieved(n))
            .collect();
        match ssm::delete(&self.aws.ssm, &names).await {
            Ok(()) => (0..batch.len())
                .map(|k| (k, Ok("deleted".to_owned())))
                .collect(),
            Err(e) => std::iter::once((0, Err(e.into())))
                .chain((1..batch.len()).map(|k| (k, Err(ActionError::NotStarted))))
                .collect(),
        }
    }

    /// One action.
    async fn run(&self, action: &Action, state: &Mutex<State>) -> Result<String, ActionError> {
        let scope = scope(self.config);
        match action {
            Action::CreateKey { alias } => self.create_key(alias, state).await,
            Action::DeleteRunner { uuid, .. } => {
                if lock(state).reprieved.contains(&bare_uuid(uuid)) {
                    return Ok(KEPT.to_owned());
                }
                let existed = self.bitbucket.delete_runner(&scope, uuid).await?;
                Ok(gone(existed))
            }
            Action::DrainRunner { uuid, instance, .. } => {
                self.drain(uuid, instance.as_ref(), state).await
            }
            Action::EnableRunner { uuid, .. } => {
                let existed = self
                    .bitbucket
                    .set_runner_enabled(&scope, uuid, true)
                    .await?;
                Ok(if existed { "enabled" } else { "already gone" }.to_owned())
            }
            Action::DeleteOrphanRunner { uuid, instance, .. } => {
                self.delete_orphan_runner(uuid, instance.as_ref()).await
            }
            Action::DeleteParameter { name, .. } | Action::DeleteOrphanParameter { name, .. } => {
                if lock(state).concerns_reprieved(name) {
                    return Ok(KEPT.to_owned());
                }
                ssm::delete(&self.aws.ssm, std::slice::from_ref(name)).await?;
                Ok("deleted".to_owned())
            }
            Action::UpdateRunner { uuid, name, .. } => {
                let labels = self.config.labels();
                self.bitbucket
                    .update_runner(&scope, uuid, name, labels)
                    .await?;
                Ok("labels updated".to_owned())
            }
            Action::CreateRunner { name } => self.create_runner(name, state).await,
            Action::CreateLaunchTemplate { .. } => self.create_launch_template(state).await,
            Action::CreateLaunchTemplateVersion { .. } => self.new_template_version(state).await,
            Action::RequestFleet { .. }
            | Action::SetFleetTarget { .. }
            | Action::ModifyFleet { .. }
            | Action::CancelFleet { .. } => self.fleet_action(action, state).await,
            Action::TerminateInstances { ids, .. } | Action::TerminateStrayInstances { ids } => {
                let ids: Vec<String> = {
                    let st = lock(state);
                    ids.iter()
                        .filter(|i| !st.spared.contains(*i))
                        .cloned()
                        .collect()
                };
                ec2::terminate(&self.aws.ec2, &ids).await?;
                Ok(format!("{} terminating", ids.len()))
            }
            Action::DeleteClaims { names, .. } | Action::PruneClaims { names } => {
                let names: Vec<String> = {
                    let st = lock(state);
                    names
                        .iter()
                        .filter(|n| !st.concerns_reprieved(n))
                        .cloned()
                        .collect()
                };
                ssm::delete(&self.aws.ssm, &names).await?;
                Ok(format!("{} deleted", names.len()))
            }
            Action::ReleaseClaim {
                runner, generation, ..
            } => {
                if lock(state).reprieved.contains(runner) {
                    return Ok(KEPT.to_owned());
                }
                self.release_claim(runner, *generation).await
            }
            Action::OfferRunner { runner } => self.offer(runner).await,
            Action::DeleteLaunchTemplate { name } => {
                let existed = ec2::delete_launch_template(&self.aws.ec2, name).await?;
                Ok(gone(existed))
            }
        }
    }

    async fn create_key(&self, alias: &str, state: &Mutex<State>) -> Result<String, ActionError> {
        let arn = kms::create(&self.aws.kms, alias, &self.config.name).await?;
        lock(state).key_arn = Some(arn.clone());
        Ok(arn)
    }

    async fn delete_orphan_runner(
        &self,
        uuid: &str,
        instance: Option<&String>,
    ) -> Result<String, ActionError> {
        // The instance first: while it runs, it holds a runner that is going away.
        if let Some(id) = instance {
            ec2::terminate(&self.aws.ec2, std::slice::from_ref(id)).await?;
        }
        let existed = self
            .bitbucket
            .delete_runner(&scope(self.config), uuid)
            .await?;
        Ok(match (existed, instance) {
            (true, Some(id)) => format!("deleted ({id} terminating)"),
            (true, None) => "deleted".to_owned(),
            (false, _) => "already gone".to_owned(),
        })
    }

    fn desired(&self) -> Result<&Desired, ActionError> {
        self.desired.ok_or(ActionError::Missing("no desired state"))
    }

    async fn create_launch_template(&self, state: &Mutex<State>) -> Result<String, ActionError> {
        let spec = &self.desired()?.launch_template;
        let (id, version) = ec2::create_launch_template(&self.aws.ec2, spec).await?;
        lock(state).launch_template = Some((id.clone(), version));
        Ok(format!("{id} version {version}"))
    }

    async fn new_template_version(&self, state: &Mutex<State>) -> Result<String, ActionError> {
        let spec = &self.desired()?.launch_template;
        let (id, _) = launch_template(state)?;
        let version = ec2::create_launch_template_version(&self.aws.ec2, &id, spec).await?;
        lock(state).launch_template = Some((id.clone(), version));
        Ok(format!("{id} version {version}"))
    }

    /// The fleet request's actions, through the backend seam.
    async fn fleet_action(
        &self,
        action: &Action,
        state: &Mutex<State>,
    ) -> Result<String, ActionError> {
        match action {
            Action::RequestFleet {
                target, on_demand, ..
            } => {
                self.request_fleet(target_of(*target, *on_demand), state)
                    .await
            }
            Action::SetFleetTarget {
                id, to, on_demand, ..
            } => {
                let target = target_of(*to, *on_demand);
                self.fleet_api.set_target(id, target, false).await?;
                Ok(format!("target {to} ({on_demand} on-demand)"))
            }
            Action::ModifyFleet {
                id, to, on_demand, ..
            } => {
                self.modify_fleet(id, target_of(*to, *on_demand), state)
                    .await
            }
            Action::CancelFleet {
                id,
                terminate_instances,
                ..
            } => {
                self.fleet_api
                    .cancel(std::slice::from_ref(id), *terminate_instances)
                    .await?;
                Ok(if *terminate_instances {
                    "cancelled, instances terminating"
                } else {
                    "cancelled, instances run on"
                }
                .to_owned())
            }
            _ => unreachable!("only fleet actions come here"),
        }
    }

    async fn request_fleet(
        &self,
        target: FleetTarget,
        state: &Mutex<State>,
    ) -> Result<String, ActionError> {
        let spec = &self.desired()?.fleet;
        let (id, version) = launch_template(state)?;
        let fleet_id = self.fleet_api.request(spec, &id, version, target).await?;
        Ok(format!(
            "{fleet_id} (target {}, {} on-demand)",
            target.total, target.on_demand
        ))
    }

    /// Disables the runner, reads it again, and keeps it (enabled again, its host spared)
    /// if it took a step in between: Bitbucket may have handed it one after the plan's
    /// snapshot. Later actions of the plan about it are skipped then.
    async fn drain(
        &self,
        uuid: &str,
        instance: Option<&String>,
        state: &Mutex<State>,
    ) -> Result<String, ActionError> {
        let scope = scope(self.config);
        if !self
            .bitbucket
            .set_runner_enabled(&scope, uuid, false)
            .await?
        {
            return Ok("already gone".to_owned());
        }
        let now = self.bitbucket.get_runner(&scope, uuid).await?;
        if !now.as_ref().is_some_and(|r| r.is_busy()) {
            return Ok("disabled, no step".to_owned());
        }
        self.bitbucket
            .set_runner_enabled(&scope, uuid, true)
            .await?;
        let mut st = lock(state);
        st.reprieved.insert(bare_uuid(uuid));
        st.spared.extend(instance.cloned());
        tracing::warn!(runner = %uuid, "the runner took a step while being drained: enabled again and kept, with its host; the next plan counts it");
        Ok(KEPT.to_owned())
    }

    async fn modify_fleet(
        &self,
        id: &str,
        target: FleetTarget,
        state: &Mutex<State>,
    ) -> Result<String, ActionError> {
        let spec = &self.desired()?.fleet;
        let (lt, version) = launch_template(state)?;
        self.fleet_api
            .modify(id, spec, &lt, version, target)
            .await?;
        Ok(format!(
            "launch template version {version}, target {} ({} on-demand), instances kept",
            target.total, target.on_demand
        ))
    }

    /// Unbinds the runner's command first (so a free claim never names a command still
    /// bound to the gone instance), then writes the free generation.
    async fn release_claim(&self, runner: &str, generation: u64) -> Result<String, ActionError> {
        let fleet = &self.config.name;
        ssm::unbind_runner(&self.aws.ssm, fleet, runner).await?;
        let written =
            ssm::put_claim_if_absent(&self.aws.ssm, fleet, runner, generation, ClaimHolder::FREE)
                .await?;
        Ok(if written {
            format!("generation {generation} = free")
        } else {
            // A booting instance wrote this generation first: the claim moved on.
            format!("generation {generation} exists: an instance took the runner over")
        })
    }

    /// Offers a runner to the hosts: its claim generation 0 = free (hosts see only the
    /// runners that have a claim; the first host claims generation 1). `Overwrite=false`:
    /// a generation that exists is left.
    async fn offer(&self, runner: &str) -> Result<String, ActionError> {
        let written = ssm::put_claim_if_absent(
            &self.aws.ssm,
            &self.config.name,
            runner,
            names::OFFER_GENERATION,
            ClaimHolder::FREE,
        )
        .await?;
        let generation = names::OFFER_GENERATION;
        Ok(if written {
            format!("generation {generation} = free")
        } else {
            format!("generation {generation} exists")
        })
    }

    /// Registers a runner and stores its command at once; if rendering or storing fails,
    /// the runner is deleted again (its secret would be lost otherwise).
    async fn create_runner(&self, name: &str, state: &Mutex<State>) -> Result<String, ActionError> {
        let key = key_arn(state)?;
        let scope = scope(self.config);
        let created = self
            .bitbucket
            .create_runner(&scope, name, self.config.labels(), &self.observed.runners)
            .await?;
        let command: Result<SecretString, _> = RunnerCommand {
            image: &self.config.bitbucket.runner_image,
            account_uuid: &self.observed.account_uuid,
            repository_uuid: self.observed.repository_uuid.as_deref(),
            runner_uuid: &created.runner.uuid,
            client_id: &created.client_id,
            client_secret: &created.client_secret,
        }
        .render();
        let stored = match command {
            Ok(command) => ssm::put_runner_command(
                &self.aws.ssm,
                &self.config.name,
                &created.runner.uuid,
                &command,
                &key,
            )
            .await
            .map_err(ActionError::from),
            Err(e) => Err(e.into()),
        };
        match stored {
            Ok(parameter) => {
                self.offer(&bare_uuid(&created.runner.uuid)).await?;
                Ok(format!(
                    "{} stored in {parameter}, offered to the hosts",
                    created.runner.uuid
                ))
            }
            Err(e) => {
                if let Err(undo) = self
                    .bitbucket
                    .delete_runner(&scope, &created.runner.uuid)
                    .await
                {
                    tracing::warn!(runner = %created.runner.uuid, error = %undo, "could not delete the runner whose command was not stored; the next apply deletes it");
                }
                Err(e)
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_arn(state: &Mutex<State>) -> Result<String, ActionError> {
    lock(state)
        .key_arn
        .clone()
        .ok_or(ActionError::Missing("no usable KMS key"))
}

fn launch_template(state: &Mutex<State>) -> Result<(String, i64), ActionError> {
    lock(state)
        .launch_template
        .clone()
        .ok_or(ActionError::Missing("no launch template"))
}

/// What a skipped action of a reprieved runner reports.
const KEPT: &str = "kept: its runner took a step while being drained";

fn gone(existed: bool) -> String {
    if existed { "deleted" } else { "already gone" }.to_owned()
}

/// An action's target and on-demand part as the backend's target (the part never above
/// the target, whatever a plan file says).
fn target_of(total: u32, on_demand: u32) -> FleetTarget {
    FleetTarget {
        total,
        on_demand: on_demand.min(total),
    }
}
