//! Identities: the account, its root principal and IAM-style users, each
//! with access keys that sign requests (SigV4).
//!
//! ARNs follow AWS: `arn:aws:iam::<account>:root` and
//! `arn:aws:iam::<account>:user/<name>`. Access key ids look like AWS's
//! (`AKIA` + 16 base-32 characters) so tools that sanity-check them accept
//! ours; secrets are 40 characters of base64 alphabet, as AWS's are.
//!
//! Every principal also has a unique id, given once at creation and never
//! reused: `AIDA` + 17 upper-case letters and digits for a user (AWS's form
//! for IAM users), the account id for the root (as STS reports the root).
//! Key policies and grants name principals by ARN, as AWS shows them, but
//! are bound to these ids when they are put; authorization matches on the
//! id, so a user removed and re-created under the same name (same ARN, new
//! id) inherits nothing of the old one's.

use rand::Rng;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

/// The name under which the account's root principal is stored.
pub const ROOT_NAME: &str = "root";

/// An authenticated identity: the account root or a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub arn: String,
    pub account_id: String,
    /// The unique id (see the module documentation).
    pub id: String,
}

impl Principal {
    /// The account root. Its unique id is the account id.
    pub fn root(account_id: &str) -> Self {
        Principal {
            arn: root_arn(account_id),
            account_id: account_id.to_string(),
            id: account_id.to_string(),
        }
    }
    pub fn is_root(&self) -> bool {
        self.arn == root_arn(&self.account_id)
    }
    /// The short form used in messages: `user/NAME` or `root`.
    pub fn short(&self) -> &str {
        self.arn
            .rsplit_once(':')
            .map(|(_, tail)| tail)
            .unwrap_or(&self.arn)
    }
}

pub fn root_arn(account_id: &str) -> String {
    format!("arn:aws:iam::{account_id}:root")
}

pub fn user_arn(account_id: &str, name: &str) -> String {
    format!("arn:aws:iam::{account_id}:user/{name}")
}

/// A new access key. The secret is shown once and then only kept sealed.
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

pub fn generate_account_id() -> String {
    let mut rng = OsRng;
    // No leading zero: some tools treat account ids as numbers.
    let first = rng.gen_range(1..=9u8);
    let mut s = first.to_string();
    for _ in 0..11 {
        s.push(char::from(b'0' + rng.gen_range(0..10u8)));
    }
    s
}

/// The prefix of a user's unique id, as AWS's IAM users have.
pub const USER_ID_PREFIX: &str = "AIDA";
const USER_ID_RANDOM_CHARS: usize = 17;

/// A new user's unique id: `AIDA` + 17 random upper-case letters and digits
/// (about 88 bits: collisions are checked for anyway, at insertion).
pub fn generate_user_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = OsRng;
    let mut id = String::from(USER_ID_PREFIX);
    for _ in 0..USER_ID_RANDOM_CHARS {
        id.push(char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]));
    }
    id
}

/// Whether `s` has the shape of a user's unique id.
pub fn is_user_id(s: &str) -> bool {
    s.len() == USER_ID_PREFIX.len() + USER_ID_RANDOM_CHARS
        && s.starts_with(USER_ID_PREFIX)
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// The user name in an ARN of one of `account_id`'s users, if it is one.
pub fn user_name_in_arn<'a>(account_id: &str, arn: &'a str) -> Option<&'a str> {
    arn.strip_prefix("arn:aws:iam::")?
        .strip_prefix(account_id)?
        .strip_prefix(":user/")
}

pub fn generate_access_key() -> AccessKey {
    const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = OsRng;
    let mut id = String::from("AKIA");
    for _ in 0..16 {
        id.push(char::from(BASE32[rng.gen_range(0..BASE32.len())]));
    }
    let mut secret = Zeroizing::new(String::with_capacity(40));
    for _ in 0..40 {
        secret.push(char::from(SECRET[rng.gen_range(0..SECRET.len())]));
    }
    AccessKey {
        access_key_id: id,
        secret_access_key: secret,
    }
}

/// IAM's rule for user names: 1–64 of `A-Za-z0-9+=,.@_-`.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if !ok {
        return Err(format!(
            "invalid user name {name:?}: use 1-64 characters of A-Z a-z 0-9 + = , . @ _ -"
        ));
    }
    if name == ROOT_NAME {
        return Err("\"root\" is the account's root principal, not a user name".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let a = generate_account_id();
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        let k = generate_access_key();
        assert!(k.access_key_id.starts_with("AKIA") && k.access_key_id.len() == 20);
        assert_eq!(k.secret_access_key.len(), 40);
        assert!(!format!("{k:?}").contains(k.secret_access_key.as_str()));
        assert!(validate_user_name("S3DemoUser").is_ok());
        assert!(validate_user_name("a b").is_err());
        assert!(validate_user_name("root").is_err());
        let p = Principal {
            arn: user_arn("123456789012", "bob"),
            account_id: "123456789012".into(),
            id: generate_user_id(),
        };
        assert!(is_user_id(&p.id), "{}", p.id);
        assert_ne!(p.id, generate_user_id());
        assert!(!is_user_id("AIDAshort"));
        assert_eq!(
            user_name_in_arn("123456789012", &p.arn),
            Some("bob"),
            "a user of the account"
        );
        assert_eq!(user_name_in_arn("999999999999", &p.arn), None);
        assert_eq!(
            user_name_in_arn("123456789012", &root_arn("123456789012")),
            None
        );
        assert_eq!(Principal::root("123456789012").id, "123456789012");
        assert_eq!(p.short(), "user/bob");
        assert!(Principal::root("123456789012").is_root());
    }
}
