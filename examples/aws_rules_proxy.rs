//! The tests' AWS-rules layer as a program, for `scripts/demo.sh`: a recording proxy on a
//! free loopback port in front of moto that answers as AWS does where moto does not
//! (`testkit::aws_rules`). It writes its URL to `--ready-file` and stops by itself
//! after `--max-lifetime-secs`.
//!
//! `aws_rules_proxy --upstream http://127.0.0.1:PORT --ready-file FILE [--max-lifetime-secs N]`

use std::time::Duration;

use testkit::recorder::Recorder;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(upstream), Some(ready)) = (arg(&args, "--upstream"), arg(&args, "--ready-file"))
    else {
        eprintln!(
            "usage: aws_rules_proxy --upstream URL --ready-file FILE [--max-lifetime-secs N]"
        );
        std::process::exit(2);
    };
    let lifetime = arg(&args, "--max-lifetime-secs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    // The demo keeps no IAM evidence: no dumps.
    let proxy = Recorder::start(&upstream, None).await;
    if let Err(e) = std::fs::write(&ready, &proxy.endpoint) {
        eprintln!("cannot write {ready}: {e}");
        std::process::exit(1);
    }
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(lifetime)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(proxy);
}
