//! bbfleet: Bitbucket Pipelines self-hosted runners on AWS spot capacity.

pub mod autoscale;
pub mod aws;
pub mod bake;
pub mod bitbucket;
pub mod cli;
pub mod config;
pub mod execute;
pub mod lock;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod plan;
pub mod planfile;
pub mod policy;
pub mod preflight;
pub mod runner_command;
pub mod simulate;
pub mod stats;
pub mod status;
pub mod userdata;
pub mod world;
