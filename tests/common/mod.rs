//! Shared test support. Each test binary uses a different subset.
#![allow(dead_code, unused_imports)]

pub mod ceph;
pub mod control;
pub mod crash_model;
pub mod kms;
pub mod nbd;
pub mod prometheus;
pub mod raw;
pub mod s3;
pub mod tls;
pub mod tools;
pub mod volume;
pub mod xts_oracle;

pub use kms::*;
