//! TEMPORARY stub (replaced by the real policy engine).
use std::collections::BTreeMap;
#[derive(Debug)]
pub struct Policy;
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Malformed(String),
}
pub struct AccessRequest<'a> {
    pub principal_arn: &'a str,
    pub account_id: &'a str,
    pub caller_account: &'a str,
    pub action: &'a str,
    pub resource_arn: &'a str,
    pub encryption_context: &'a BTreeMap<String, String>,
}
pub enum Decision {
    Allow,
    ExplicitDeny,
    ImplicitDeny,
}
impl Policy {
    pub fn parse(_j: &str) -> Result<Policy, PolicyError> {
        Ok(Policy)
    }
    pub fn evaluate(&self, _r: &AccessRequest) -> Decision {
        Decision::Allow
    }
}
pub fn default_key_policy(_a: &str, _c: &str) -> String {
    "{}".into()
}
