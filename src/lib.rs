//! bbfleet: Bitbucket Pipelines self-hosted runners on AWS spot capacity.

pub mod config;
pub mod names;
pub mod userdata;
pub mod bitbucket;
pub mod runner_command;
pub mod stats;
pub mod aws;
pub mod observe;
pub mod plan;
pub mod execute;
pub mod status;
pub mod cli;
