//! Shared test harness: real emulators on loopback.
#![allow(dead_code)]

pub mod aws_rules;
pub mod harness;
pub mod imds;
pub mod moto;
pub mod recorder;
pub mod world;
