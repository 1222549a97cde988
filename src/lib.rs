pub mod cli;
pub mod kms;
