pub mod cli;
pub mod envelope;
pub mod keys;
pub mod kms;
pub mod nbd;
pub mod volume;
