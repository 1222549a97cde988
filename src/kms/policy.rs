//! Key policy documents: parsing (as `PutKeyPolicy`/`CreateKey` validate them)
//! and evaluation (as every key operation authorises its caller).
//!
//! The language is the AWS IAM policy language as AWS KMS key policies use it.
//!
//! The language, its validation and the error every rejection becomes are
//! described in `document`; condition keys, condition semantics, principal
//! matching and the Allow/Deny decision in `evaluate`. Parsing does not
//! depend on evaluation; evaluation reads the parsed document.

pub mod document;
pub mod evaluate;
mod strict_json;

pub use document::{MAX_POLICY_BYTES, Policy, PolicyError, default_key_policy};
pub use evaluate::{AccessRequest, Decision};

#[cfg(test)]
mod tests;
