pub mod cli;
pub mod kms;
pub mod nbd;
pub mod volume;
