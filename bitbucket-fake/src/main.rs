//! `bitbucket-fake`: run the fake Bitbucket Cloud API as a process.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bitbucket_fake::{stable_uuid, FakeBitbucket, FakeConfig, RepoSpec, WorkspaceSpec};
use clap::Parser;

/// A fake of the Bitbucket Cloud runner API, for bbfleet's tests and demo.
#[derive(Debug, Parser)]
#[command(name = "bitbucket-fake", version)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to bind (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Workspace slug to serve (in addition to the default "acme").
    #[arg(long, default_value = "acme")]
    workspace: String,
    /// Repository slug(s) in that workspace (repeatable).
    #[arg(long = "repository", default_value = "app")]
    repositories: Vec<String>,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 3600)]
    max_lifetime_secs: u64,
    /// Write the base URL to this file once listening (atomically).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn build_config(args: &Args) -> FakeConfig {
    let mut cfg = FakeConfig {
        latency: Duration::from_millis(args.latency_ms),
        ..FakeConfig::default()
    };
    let ws_slug = args.workspace.trim().to_owned();
    let idx = match cfg
        .workspaces
        .iter()
        .position(|w| w.slug.eq_ignore_ascii_case(&ws_slug))
    {
        Some(i) => i,
        None => {
            cfg.workspaces.push(WorkspaceSpec {
                uuid: stable_uuid(&format!("workspace:{ws_slug}")),
                slug: ws_slug.clone(),
                repositories: Vec::new(),
            });
            cfg.workspaces.len() - 1
        }
    };
    let ws = &mut cfg.workspaces[idx];
    for repo in &args.repositories {
        let repo = repo.trim();
        if repo.is_empty()
            || ws
                .repositories
                .iter()
                .any(|r| r.slug.eq_ignore_ascii_case(repo))
        {
            continue;
        }
        ws.repositories.push(RepoSpec {
            uuid: stable_uuid(&format!("repository:{ws_slug}/{repo}")),
            slug: repo.to_owned(),
        });
    }
    cfg
}

fn write_ready_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ready".to_owned());
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(unix)]
async fn terminate_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn terminate_signal() {
    std::future::pending::<()>().await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let cfg = build_config(&args);
    let fake = match FakeBitbucket::start_on(cfg, SocketAddr::new(args.bind, args.port)).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "bitbucket-fake: cannot listen on {}:{}: {e}",
                args.bind, args.port
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let base = fake.base_url();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "bitbucket-fake listening on {base}");
        let _ = out.flush();
    }
    if let Some(path) = &args.ready_file {
        if let Err(e) = write_ready_file(path, &base) {
            eprintln!("bitbucket-fake: cannot write {}: {e}", path.display());
            fake.shutdown();
            return std::process::ExitCode::FAILURE;
        }
    }

    let lifetime = Duration::from_secs(args.max_lifetime_secs);
    let waiter = fake.clone();
    tokio::select! {
        _ = tokio::time::sleep(lifetime) => eprintln!("bitbucket-fake: max lifetime reached"),
        _ = tokio::signal::ctrl_c() => eprintln!("bitbucket-fake: interrupted"),
        _ = terminate_signal() => eprintln!("bitbucket-fake: terminated"),
        _ = waiter.wait_stopped(Duration::from_secs(2)) => {}
    }
    fake.shutdown();
    fake.wait_stopped(Duration::from_secs(2)).await;
    std::process::ExitCode::SUCCESS
}
