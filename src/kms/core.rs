//! The core of the master-key service: its state (store, root key, clock,
//! account, audit log) and what every operation relies on — resolving a
//! KeyId, authorizing an action by key policy and grants, checking a key's
//! state, sealing and unsealing key material for the duration of one
//! operation, and managing users.
//!
//! The core knows nothing of operations, requests or HTTP: `ops/` builds the
//! KMS API on top of it, `service` dispatches to `ops/` and audits each
//! request, and `http` puts that on the wire. Dependencies run that one way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use chrono::SecondsFormat;
use zeroize::Zeroizing;

use super::audit::{AuditLog, AuditNote, AuditRecord};
use super::clock::{Clock, millis};
use super::datadir::{DataDir, DataDirError};
use super::error::{ErrorKind, KmsError};
use super::grant::{self, Constraint};
use super::iam::{self, AccessKey, Principal};
use super::key_state::KeyState;
use super::metrics::{KeyStates, RequestMetrics};
use super::policy::document::root_arn_account;
use super::policy::{AccessRequest, Decision, Policy};
use super::seal::{self, KeyMaterial, RootKey};
use super::store::{
    self, KeyRow, PrincipalRow, SCHEMA_VERSION, SCHEMA_VERSION_UNIQUE_IDS_MISSING, Store,
};

/// Why the service could not be opened or initialised.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{0}")]
    Store(#[from] KmsError),
    #[error("audit log {path}: {source}")]
    Audit {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "KMS data directory {}: its database has schema version {found:?}, but this envol reads only version {supported} (and upgrades version 1 to it); use the envol that wrote it (or a newer one)",
        dir.display()
    )]
    Schema {
        dir: std::path::PathBuf,
        found: String,
        supported: u32,
    },
    #[error("{0}")]
    Invalid(String),
}

const PUT_KEY_POLICY: &str = "kms:PutKeyPolicy";

/// AWS's per-key limit on on-demand rotations.
pub const DEFAULT_ON_DEMAND_ROTATION_LIMIT: u32 = 10;

/// The master-key service.
pub struct Kms {
    pub(super) store: Store,
    root_key: RootKey,
    account_id: String,
    region: String,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
    /// How many on-demand rotations one key may have (AWS: 10).
    pub(super) on_demand_rotation_limit: AtomicU32,
    /// Requests counted for the metrics (`service` records them).
    pub(super) requests: RequestMetrics,
}

impl KeyStates for Kms {
    fn count_by_state(&self) -> Result<Vec<(String, u64)>, KmsError> {
        self.store.count_keys_by_state()
    }
}

/// AWS region names look like `us-east-1`, `eu-central-2`, `us-gov-west-1`.
pub fn validate_region(region: &str) -> Result<(), String> {
    let parts: Vec<&str> = region.split('-').collect();
    let ok = parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid region {region:?}: expected a name like us-east-1"
        ))
    }
}

impl Kms {
    /// Creates a new data directory: root key, database, account and root
    /// credentials. Returns the service and the root access key (shown once).
    pub fn init(
        dir: &DataDir,
        region: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<(Kms, AccessKey), ServiceError> {
        validate_region(region).map_err(ServiceError::Invalid)?;
        let root_key = dir.create()?;
        let store = open_store(dir)?;
        let account_id = iam::generate_account_id();
        let access = iam::generate_access_key();
        let now = millis(clock.now());
        store.transaction(|tx| {
            Store::set_meta(tx, "schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
            Store::set_meta(tx, "account_id", account_id.as_bytes())?;
            Store::set_meta(tx, "region", region.as_bytes())?;
            Store::set_meta(
                tx,
                "root_key_canary",
                &root_key.seal(seal::CANARY_PURPOSE, b"envol"),
            )?;
            Store::insert_principal(
                tx,
                iam::ROOT_NAME,
                &account_id,
                &iam::root_arn(&account_id),
                now,
            )?;
            Store::insert_access_key(
                tx,
                &access.access_key_id,
                iam::ROOT_NAME,
                &root_key.seal(
                    &seal::secret_purpose(&access.access_key_id),
                    access.secret_access_key.as_bytes(),
                ),
                now,
            )
        })?;
        restrict_db_files(dir);
        let audit = open_audit(dir)?;
        Ok((
            Kms {
                store,
                root_key,
                account_id,
                region: region.to_string(),
                clock,
                audit,
                on_demand_rotation_limit: AtomicU32::new(DEFAULT_ON_DEMAND_ROTATION_LIMIT),
                requests: RequestMetrics::default(),
            },
            access,
        ))
    }

    /// Loads an initialised data directory, checking permissions, the
    /// database's schema version, and that the root key belongs to the
    /// store. (`Kms::open` is this plus the scheduled work that fell due
    /// while nothing was running.)
    pub(super) fn load(dir: &DataDir, clock: Arc<dyn Clock>) -> Result<Kms, ServiceError> {
        let root_key = dir.open()?;
        let store = open_store(dir)?;
        let (canary, version, account_id, region) = store.read(|c| {
            Ok((
                Store::meta(c, "root_key_canary")?,
                Store::meta_string(c, "schema_version")?,
                Store::meta_string(c, "account_id")?,
                Store::meta_string(c, "region")?,
            ))
        })?;
        let canary = canary.ok_or_else(|| DataDirError::NotInitialised(dir.root.clone()))?;
        // Every directory envol ever initialised records its version; one
        // without it was not written by envol as we know it.
        let Some(version) = version else {
            return Err(ServiceError::Schema {
                dir: dir.root.clone(),
                found: "none".into(),
                supported: SCHEMA_VERSION,
            });
        };
        if root_key.unseal(seal::CANARY_PURPOSE, &canary).is_err() {
            return Err(DataDirError::WrongRootKey(dir.root_key_path()).into());
        }
        let account_id =
            account_id.ok_or_else(|| DataDirError::NotInitialised(dir.root.clone()))?;
        let region = region.ok_or_else(|| DataDirError::NotInitialised(dir.root.clone()))?;
        if version == SCHEMA_VERSION_UNIQUE_IDS_MISSING.to_string() {
            migrate_to_unique_ids(&store, &account_id)?;
        }
        restrict_db_files(dir);
        let audit = open_audit(dir)?;
        Ok(Kms {
            store,
            root_key,
            account_id,
            region,
            clock,
            audit,
            on_demand_rotation_limit: AtomicU32::new(DEFAULT_ON_DEMAND_ROTATION_LIMIT),
            requests: RequestMetrics::default(),
        })
    }

    pub fn account_id(&self) -> &str {
        &self.account_id
    }
    pub fn region(&self) -> &str {
        &self.region
    }
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }
    pub(super) fn now_ms(&self) -> i64 {
        millis(self.clock.now())
    }
    pub fn root_principal(&self) -> Principal {
        Principal::root(&self.account_id)
    }

    // ----- identities -----

    /// Adds an IAM-style user with one access key.
    pub fn add_user(&self, name: &str) -> Result<(Principal, AccessKey), KmsError> {
        iam::validate_user_name(name).map_err(KmsError::validation)?;
        if self.store.principal_exists(name)? {
            return Err(KmsError::new(
                ErrorKind::AlreadyExists,
                format!("user {name} already exists"),
            ));
        }
        let arn = iam::user_arn(&self.account_id, name);
        let access = iam::generate_access_key();
        let now = self.now_ms();
        let id = self.store.transaction(|tx| {
            let id = new_user_id(tx)?;
            Store::insert_principal(tx, name, &id, &arn, now)?;
            Store::insert_access_key(
                tx,
                &access.access_key_id,
                name,
                &self.root_key.seal(
                    &seal::secret_purpose(&access.access_key_id),
                    access.secret_access_key.as_bytes(),
                ),
                now,
            )?;
            Ok(id)
        })?;
        Ok((
            Principal {
                arn,
                account_id: self.account_id.clone(),
                id,
            },
            access,
        ))
    }

    pub fn remove_user(&self, name: &str) -> Result<(), KmsError> {
        iam::validate_user_name(name).map_err(KmsError::validation)?;
        if !self.store.remove_principal(name)? {
            return Err(KmsError::not_found(format!("no user named {name}")));
        }
        Ok(())
    }

    pub fn list_principals(&self) -> Result<Vec<PrincipalRow>, KmsError> {
        self.store.list_principals()
    }

    /// The principal and secret behind an access key id, for SigV4.
    pub fn credentials(
        &self,
        access_key_id: &str,
    ) -> Result<Option<(Principal, Zeroizing<String>)>, KmsError> {
        let Some((arn, id, sealed)) = self.store.access_key(access_key_id)? else {
            return Ok(None);
        };
        let secret = self
            .root_key
            .unseal(&seal::secret_purpose(access_key_id), &sealed)
            .map_err(|e| KmsError::internal(e.to_string()))?;
        let secret = Zeroizing::new(String::from_utf8_lossy(&secret).into_owned());
        Ok(Some((
            Principal {
                arn,
                account_id: self.account_id.clone(),
                id,
            },
            secret,
        )))
    }

    /// The audit log, for what the service writes besides one line per
    /// request (unauthenticated summaries) and for its rotation bounds.
    pub(super) fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Writes one audit line. A failure to audit is logged, not hidden, and
    /// does not undo the operation it describes (that has already happened).
    pub(super) fn audit(
        &self,
        request_id: &str,
        principal: Option<&str>,
        source: Option<&str>,
        operation: &str,
        note: &AuditNote,
        error: Option<&str>,
    ) {
        let rec = AuditRecord {
            time: self
                .clock
                .now()
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            request_id,
            principal,
            source,
            operation,
            key: note.key_arn.as_deref(),
            destination_key: note.destination_key_arn.as_deref(),
            encryption_context: note.encryption_context.as_ref(),
            outcome: if error.is_none() {
                "success"
            } else {
                "failure"
            },
            error,
        };
        if let Err(e) = self.audit.record(&rec) {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    // ----- helpers for operations -----

    pub(super) fn key_arn(&self, key_id: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:key/{}",
            self.region, self.account_id, key_id
        )
    }

    pub(super) fn alias_arn(&self, alias: &str) -> String {
        format!("arn:aws:kms:{}:{}:{}", self.region, self.account_id, alias)
    }

    /// Resolves a KeyId in any of AWS's four forms: key id, key ARN, alias
    /// name, alias ARN.
    pub(super) fn resolve_key(&self, key_ref: &str) -> Result<KeyRow, KmsError> {
        if key_ref.is_empty() || key_ref.len() > 2048 {
            return Err(KmsError::validation("KeyId must be 1-2048 characters"));
        }
        let arn_prefix = format!("arn:aws:kms:{}:{}:", self.region, self.account_id);
        let local = if let Some(rest) = key_ref.strip_prefix("arn:") {
            match key_ref.strip_prefix(&arn_prefix) {
                Some(tail) => tail,
                None => {
                    let _ = rest;
                    return Err(KmsError::not_found(format!(
                        "Key '{key_ref}' does not exist"
                    )));
                }
            }
        } else {
            key_ref
        };
        if local.starts_with("alias/") {
            let alias = self.store.alias(local)?.ok_or_else(|| {
                KmsError::not_found(format!("Alias '{}' is not found.", self.alias_arn(local)))
            })?;
            return self.store.key(&alias.key_id)?.ok_or_else(|| {
                KmsError::not_found(format!("Alias '{}' is not found.", self.alias_arn(local)))
            });
        }
        let id = local.strip_prefix("key/").unwrap_or(local);
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(KmsError::not_found(format!("Invalid keyId '{key_ref}'")));
        }
        self.store.key(id)?.ok_or_else(|| {
            KmsError::not_found(format!("Key '{}' does not exist", self.key_arn(id)))
        })
    }

    /// Allows or refuses `action` on `key`: by its key policy, or by a grant
    /// on the key for the caller whose constraint the context satisfies.
    pub(super) fn authorize(
        &self,
        caller: &Caller<'_>,
        key: &KeyRow,
        action: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<(), KmsError> {
        self.authorize_with(caller, key, action, context, |_, _| true)
    }

    /// As `authorize`, but a grant counts only if `grant_ok` also accepts it
    /// (CreateGrant through a grant may not widen that grant).
    pub(super) fn authorize_with(
        &self,
        caller: &Caller<'_>,
        key: &KeyRow,
        action: &str,
        context: &BTreeMap<String, String>,
        grant_ok: impl Fn(&[String], &Constraint) -> bool,
    ) -> Result<(), KmsError> {
        // Lock-out safety: the account root can always repair a key policy.
        if action == PUT_KEY_POLICY && self.is_account_root(caller.principal) {
            return Ok(());
        }
        let policy = Policy::parse(&key.policy)
            .map_err(|e| KmsError::internal(format!("stored key policy unreadable: {e}")))?
            .bind(key.policy_principals.clone());
        let decision = policy.evaluate(&AccessRequest {
            principal_arn: &caller.principal.arn,
            principal_id: &caller.principal.id,
            secure_transport: caller.secure_transport,
            account_id: &self.account_id,
            caller_account: &caller.principal.account_id,
            action,
            resource_arn: &key.arn,
            encryption_context: context,
        });
        match decision {
            Decision::Allow => Ok(()),
            // An explicit deny in the key policy beats every grant, as in AWS.
            Decision::ExplicitDeny => Err(KmsError::new(
                ErrorKind::AccessDenied,
                format!(
                    "User: {} is not authorized to perform: {} on resource: {} with an explicit deny in a resource-based policy",
                    caller.principal.arn, action, key.arn
                ),
            )),
            Decision::ImplicitDeny => {
                if self.grant_allows(caller.principal, key, action, context, grant_ok)? {
                    return Ok(());
                }
                Err(KmsError::new(
                    ErrorKind::AccessDenied,
                    format!(
                        "User: {} is not authorized to perform: {} on resource: {} because no resource-based policy allows the {} action",
                        caller.principal.arn, action, key.arn, action
                    ),
                ))
            }
        }
    }

    /// Whether `caller` is this account's root.
    pub(super) fn is_account_root(&self, caller: &Principal) -> bool {
        caller.is_root() && caller.account_id == self.account_id
    }

    /// Binds a policy about to be put to the unique ids of the principals
    /// it names (see `policy::document`): returns the bindings to store
    /// with it. Naming a user of this account that does not exist is
    /// refused, as AWS refuses a policy with an invalid principal; ARNs of
    /// other accounts, roles and the like bind to nothing (envol has no such
    /// principals) and so match nobody.
    pub(super) fn bind_policy_principals(
        &self,
        policy: &Policy,
    ) -> Result<BTreeMap<String, String>, KmsError> {
        let mut bindings = BTreeMap::new();
        for arn in principals_to_bind(policy) {
            match self.bind_principal(&arn)? {
                Binding::Id(id) => {
                    bindings.insert(arn, id);
                }
                Binding::MissingUser => {
                    return Err(KmsError::new(
                        ErrorKind::MalformedPolicyDocument,
                        format!(
                            "Policy contains a statement with one or more invalid principals: no user {} exists.",
                            super::excerpt::excerpt(&arn)
                        ),
                    ));
                }
                Binding::Nobody => {}
            }
        }
        Ok(bindings)
    }

    /// What `arn` (named by a policy or grant being put) binds to now. A
    /// missing user is reported, not refused: each caller refuses it with
    /// the error its operation gives.
    pub(super) fn bind_principal(&self, arn: &str) -> Result<Binding, KmsError> {
        Ok(
            match self.store.read(|c| Store::principal_id_by_arn(c, arn))? {
                Some(id) => Binding::Id(id),
                None if iam::user_name_in_arn(&self.account_id, arn).is_some() => {
                    Binding::MissingUser
                }
                None => Binding::Nobody,
            },
        )
    }

    /// Whether `caller` could still change the policy of key `key_arn` if
    /// `policy` (bound) were its key policy: AWS's policy lock-out safety check.
    /// Grants cannot carry PutKeyPolicy, so only the policy counts — and
    /// the account root, which may always repair a key policy.
    pub(super) fn could_put_key_policy(
        &self,
        policy: &Policy,
        caller: &Caller<'_>,
        key_arn: &str,
    ) -> bool {
        if self.is_account_root(caller.principal) {
            return true;
        }
        let no_context = BTreeMap::new();
        policy.evaluate(&AccessRequest {
            principal_arn: &caller.principal.arn,
            principal_id: &caller.principal.id,
            secure_transport: caller.secure_transport,
            account_id: &self.account_id,
            caller_account: &caller.principal.account_id,
            action: PUT_KEY_POLICY,
            resource_arn: key_arn,
            encryption_context: &no_context,
        }) == Decision::Allow
    }

    /// Whether some grant on `key` for the caller allows `action` with `context`.
    fn grant_allows(
        &self,
        caller: &Principal,
        key: &KeyRow,
        action: &str,
        context: &BTreeMap<String, String>,
        grant_ok: impl Fn(&[String], &Constraint) -> bool,
    ) -> Result<bool, KmsError> {
        let Some(operation) = action.strip_prefix("kms:") else {
            return Ok(false);
        };
        if caller.account_id != self.account_id {
            return Ok(false);
        }
        for g in self.store.grants_for(&key.key_id, &caller.id)? {
            let operations: Vec<String> = serde_json::from_str(&g.operations)
                .map_err(|e| KmsError::internal(format!("stored grant unreadable: {e}")))?;
            let constraint = Constraint::from_json(g.constraints.as_deref())?;
            if grant::allows(&operations, &constraint, operation, context)
                && grant_ok(&operations, &constraint)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Refuses cryptographic use of a key that is not Enabled, as AWS does.
    pub(super) fn require_enabled(&self, key: &KeyRow) -> Result<(), KmsError> {
        match key.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::new(
                ErrorKind::Disabled,
                format!("{} is disabled.", key.arn),
            )),
            KeyState::PendingDeletion => Err(pending_deletion(key)),
        }
    }

    /// Refuses management of a key pending deletion.
    pub(super) fn require_not_pending_deletion(&self, key: &KeyRow) -> Result<(), KmsError> {
        if key.state == KeyState::PendingDeletion {
            return Err(pending_deletion(key));
        }
        Ok(())
    }

    /// Unseals one version's material for the duration of an operation.
    pub(super) fn material(
        &self,
        key_id: &str,
        version: u32,
    ) -> Result<Option<KeyMaterial>, KmsError> {
        let Some(row) = self.store.version(key_id, version)? else {
            return Ok(None);
        };
        self.unseal_material(key_id, version, &row.sealed_material)
            .map(Some)
    }

    /// The newest version of a key and its material.
    pub(super) fn newest_material(&self, key_id: &str) -> Result<(u32, KeyMaterial), KmsError> {
        let row = self
            .store
            .newest_version(key_id)?
            .ok_or_else(|| KmsError::internal(format!("key {key_id} has no material")))?;
        let m = self.unseal_material(key_id, row.version, &row.sealed_material)?;
        Ok((row.version, m))
    }

    fn unseal_material(
        &self,
        key_id: &str,
        version: u32,
        sealed: &[u8],
    ) -> Result<KeyMaterial, KmsError> {
        // A wrong length fails like a wrong tag: both mean a store that was
        // not written by this root key.
        self.root_key
            .unseal_material(&seal::material_purpose(key_id, version), sealed)
            .map_err(|e| KmsError::internal(format!("key {key_id} version {version}: {e}")))
    }

    /// Seals fresh material for a new key version.
    pub(super) fn seal_material(&self, key_id: &str, version: u32, material: &[u8; 32]) -> Vec<u8> {
        self.root_key
            .seal(&seal::material_purpose(key_id, version), material)
    }

    /// Verifies that every stored key version unseals under the root key.
    /// Returns the number of versions checked, or the first failure.
    pub fn check_integrity(&self) -> Result<usize, KmsError> {
        let all = self.store.all_versions()?;
        for (key_id, v) in &all {
            self.unseal_material(key_id, v.version, &v.sealed_material)?;
        }
        Ok(all.len())
    }
}

/// KMSInvalidStateException for a key pending deletion.
pub(super) fn pending_deletion(key: &KeyRow) -> KmsError {
    KmsError::new(
        ErrorKind::InvalidState,
        format!("{} is pending deletion.", key.arn),
    )
}

/// A unique id for a new user: never one a principal has now. (Ids of
/// removed principals are not remembered; at 88 random bits a repeat is
/// not a practical concern, and a repeat still only matches a principal
/// that was bound under it.)
fn new_user_id(tx: &rusqlite::Transaction<'_>) -> Result<String, KmsError> {
    for _ in 0..8 {
        let id = iam::generate_user_id();
        if !Store::principal_id_taken(tx, &id)? {
            return Ok(id);
        }
    }
    Err(KmsError::internal("could not find an unused principal id"))
}

/// The caller of one request as authorization sees it: who (the
/// authenticated principal) and how the request reached us, which is a fact
/// about the transport, not the identity (`RequestContext` carries it from
/// the front door).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub principal: &'a Principal,
    /// Whether the request came over TLS (the `aws:SecureTransport`
    /// condition key).
    pub secure_transport: bool,
}

/// What an ARN named by a policy or grant binds to (`Kms::bind_principal`).
pub(super) enum Binding {
    /// The unique id of the principal it names now.
    Id(String),
    /// Nothing: another account's principal, a role, a service (envol has
    /// no such principals), so it matches nobody.
    Nobody,
    /// A user of this account that does not exist.
    MissingUser,
}

/// The principals of `policy` to bind to ids: every one it names but the
/// account roots, which match by account id (the root's id) and need none.
fn principals_to_bind(policy: &Policy) -> impl Iterator<Item = String> {
    policy
        .named_principals()
        .into_iter()
        .filter(|arn| root_arn_account(arn).is_none())
}

/// Schema version 1 → 2: every principal gets its unique id (the root the
/// account id, users a new `AIDA…` id), every key policy is bound to the
/// ids of the principals it names as they are now, and every grant to its
/// grantee's and retiring principal's ids. All in one transaction, which
/// re-reads the version first: two processes opening the directory at once
/// migrate it once.
fn migrate_to_unique_ids(store: &Store, account_id: &str) -> Result<(), KmsError> {
    store.transaction(|tx| {
        let version = Store::meta_string(tx, "schema_version")?;
        if version.as_deref() != Some(SCHEMA_VERSION_UNIQUE_IDS_MISSING.to_string().as_str()) {
            return Ok(());
        }
        for (name, _arn) in Store::principals_without_id(tx)? {
            let id = if name == iam::ROOT_NAME {
                account_id.to_string()
            } else {
                new_user_id(tx)?
            };
            Store::set_principal_id(tx, &name, &id)?;
        }
        for (key_id, text) in Store::key_policies(tx)? {
            let mut bindings = BTreeMap::new();
            match Policy::parse(&text) {
                Ok(policy) => {
                    for arn in principals_to_bind(&policy) {
                        if let Some(id) = Store::principal_id_by_arn(tx, &arn)? {
                            bindings.insert(arn, id);
                        }
                    }
                }
                // Unreadable now (duplicate keys, say): authorization
                // refuses it until the account root puts a new policy.
                Err(e) => tracing::warn!(
                    "key {key_id}: its key policy is no longer accepted ({e}); requests on the key fail until the account root puts a new one"
                ),
            }
            Store::set_policy_principals(tx, &key_id, &bindings)?;
        }
        Store::bind_grants_to_principal_ids(tx)?;
        Store::set_meta(tx, "schema_version", SCHEMA_VERSION.to_string().as_bytes())
    })
}

fn open_store(dir: &DataDir) -> Result<Store, ServiceError> {
    Store::open(&dir.database()).map_err(|e| match e {
        store::OpenError::Store(e) => ServiceError::Store(e),
        store::OpenError::Schema { found } => ServiceError::Schema {
            dir: dir.root.clone(),
            found,
            supported: SCHEMA_VERSION,
        },
    })
}

fn open_audit(dir: &DataDir) -> Result<AuditLog, ServiceError> {
    let path = dir.audit_log();
    AuditLog::open(&path).map_err(|source| ServiceError::Audit { path, source })
}

/// SQLite creates its files with the process umask; the database holds only
/// sealed secrets, but its metadata (who may use which key) is private too.
fn restrict_db_files(dir: &DataDir) {
    use std::os::unix::fs::PermissionsExt;
    let db = dir.database();
    for suffix in ["", "-wal", "-shm"] {
        let p = std::path::PathBuf::from(format!("{}{}", db.display(), suffix));
        if p.exists() {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
        }
    }
}
