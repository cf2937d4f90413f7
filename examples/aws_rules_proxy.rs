//! The tests' AWS-rules layer as a program, for `scripts/demo.sh`: a recording proxy on a
//! free loopback port in front of moto that answers as AWS does where moto does not
//! (tests/support/aws_rules.rs). It writes its URL to `--ready-file` and stops by itself
//! after `--max-lifetime-secs`.
//!
//! `aws_rules_proxy --upstream http://127.0.0.1:PORT --ready-file FILE [--max-lifetime-secs N]`

#[path = "../tests/support/aws_rules.rs"]
#[allow(dead_code)]
mod aws_rules;
#[path = "../tests/support/recorder.rs"]
#[allow(dead_code)]
mod recorder;

/// The demo keeps no IAM evidence: the proxy's dump hook (tests/support/iam.rs in the
/// tests) does nothing here.
mod iam {
    pub fn dump(_proxy: u64, _upstream: &str, _call: &crate::recorder::AwsCall) {}
}

use std::time::Duration;

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
    let proxy = recorder::Recorder::start(&upstream).await;
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
