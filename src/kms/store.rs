//! The persistent store: one SQLite database (WAL mode) in the data directory.
//!
//! It holds principals and their access keys, master keys with their versions,
//! aliases, tags and grants. Secret columns (`sealed_*`) hold values sealed under the
//! root key (see `seal.rs`); this module never sees them in the clear. Every
//! change that touches more than one row runs in one transaction, so a crash
//! leaves either the whole change or none of it. Other processes (`envol kms
//! user add` while the server runs) may write concurrently: WAL plus a busy
//! timeout make that safe.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::error::KmsError;
use super::key_state::KeyState;

/// The layout this build reads and writes, recorded as meta `schema_version`
/// when a data directory is created. A database of another version is
/// refused at open, before anything touches it.
///
/// Version 2 added unique principal ids (`principals.id`), the ids a key
/// policy's principals were bound to when it was put
/// (`keys.policy_principals`) and the ids of a grant's grantee and retiring
/// principal (`grants.grantee_id`, `grants.retiring_id`): authorization
/// matches on those ids, so a user removed and re-created under the same name
/// is a different principal. A version-1 database gets the columns at open
/// ([`Store::open`]) and their values from the core's migration, which then
/// records version 2.
pub const SCHEMA_VERSION: u32 = 2;

/// The one older layout this build upgrades in place.
pub const SCHEMA_VERSION_UNIQUE_IDS_MISSING: u32 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS principals (
    name    TEXT PRIMARY KEY,          -- 'root' or an IAM-style user name
    arn     TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL           -- unix milliseconds
);
CREATE TABLE IF NOT EXISTS access_keys (
    access_key_id TEXT PRIMARY KEY,
    principal     TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    sealed_secret BLOB NOT NULL,
    created       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    key_id        TEXT PRIMARY KEY,
    arn           TEXT NOT NULL UNIQUE,
    description   TEXT NOT NULL,
    key_usage     TEXT NOT NULL,
    key_spec      TEXT NOT NULL,
    state         TEXT NOT NULL,
    created       INTEGER NOT NULL,
    policy        TEXT NOT NULL,
    deletion_date INTEGER,
    rotation_period_days INTEGER,
    next_rotation INTEGER,
    creator       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_versions (
    key_id          TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    sealed_material BLOB NOT NULL,
    created         INTEGER NOT NULL,
    rotation_type   TEXT,              -- NULL for the original material
    PRIMARY KEY (key_id, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    name    TEXT PRIMARY KEY,          -- 'alias/...'
    key_id  TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    key_id    TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE,
    tag_key   TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (key_id, tag_key)
);
-- Grants (added after the first release: CREATE IF NOT EXISTS upgrades an
-- existing database in place). `seq` orders listings and pages them.
CREATE TABLE IF NOT EXISTS grants (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    grant_id        TEXT NOT NULL UNIQUE,
    key_id          TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE,
    name            TEXT,
    grantee         TEXT NOT NULL,
    retiring        TEXT,
    operations      TEXT NOT NULL,     -- JSON array of operation names
    constraints     TEXT,              -- JSON GrantConstraints, or NULL
    issuing_account TEXT NOT NULL,
    created         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS grants_by_key_grantee ON grants(key_id, grantee);
CREATE INDEX IF NOT EXISTS grants_by_retiring ON grants(retiring);
"#;

/// Schema version 2's columns, added to version-1 tables (SQLite cannot add
/// a NOT NULL or UNIQUE column to a table with rows: uniqueness is an index,
/// and the migration fills every row before it records version 2).
const UNIQUE_ID_COLUMNS: &[(&str, &str)] = &[
    ("principals", "id TEXT"),
    ("keys", "policy_principals TEXT"),
    ("grants", "grantee_id TEXT"),
    ("grants", "retiring_id TEXT"),
];
const UNIQUE_ID_INDEXES: &str = r#"
CREATE UNIQUE INDEX IF NOT EXISTS principals_by_id ON principals(id);
CREATE INDEX IF NOT EXISTS grants_by_key_grantee_id ON grants(key_id, grantee_id);
"#;

/// A master key's metadata (its material lives in `key_versions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub key_id: String,
    pub arn: String,
    pub description: String,
    pub key_usage: String,
    pub key_spec: String,
    pub state: KeyState,
    pub created_ms: i64,
    pub policy: String,
    pub deletion_date_ms: Option<i64>,
    pub rotation_period_days: Option<i64>,
    pub next_rotation_ms: Option<i64>,
    pub creator: String,
    /// The unique id each principal ARN in `policy` named when the policy
    /// was put (ARN → id); the policy matches callers by these ids.
    pub policy_principals: BTreeMap<String, String>,
}

/// One version of a master key's material, still sealed.
#[derive(Debug, Clone)]
pub struct VersionRow {
    pub version: u32,
    pub sealed_material: Vec<u8>,
    pub created_ms: i64,
    pub rotation_type: Option<String>,
}

/// A grant as stored; `operations` and `constraints` are JSON text (see
/// `grant.rs` for their meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub seq: i64,
    pub grant_id: String,
    pub key_id: String,
    pub name: Option<String>,
    pub grantee: String,
    pub retiring: Option<String>,
    pub operations: String,
    pub constraints: Option<String>,
    pub issuing_account: String,
    pub created_ms: i64,
    /// The grantee's unique id when the grant was made (`None`: the grantee
    /// was no principal of this KMS, and the grant authorizes nobody).
    pub grantee_id: Option<String>,
    /// The retiring principal's unique id, likewise.
    pub retiring_id: Option<String>,
}

/// Which grants a listing wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrantFilter<'a> {
    pub key_id: Option<&'a str>,
    pub grant_id: Option<&'a str>,
    pub grantee: Option<&'a str>,
    pub retiring: Option<&'a str>,
    pub grantee_id: Option<&'a str>,
    pub retiring_id: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRow {
    pub name: String,
    pub key_id: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalRow {
    pub name: String,
    /// The unique id (`AIDA…` for users, the account id for the root).
    pub id: String,
    pub arn: String,
    pub created_ms: i64,
    pub access_key_ids: Vec<String>,
}

/// A tag on a key, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    pub key: String,
    pub value: String,
}

/// Why the database could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// SQLite refused (missing directory, corrupt file, ...).
    Store(KmsError),
    /// The database records a schema version this build does not read
    Schema { found: String },
}

impl From<KmsError> for OpenError {
    fn from(e: KmsError) -> Self {
        OpenError::Store(e)
    }
}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        OpenError::Store(e.into())
    }
}

/// The database handle. SQLite serialises writers anyway; one connection
/// behind a mutex keeps the service simple and every operation short.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`. A database that
    /// records a schema version other than `SCHEMA_VERSION` (or version 1,
    /// which gets version 2's columns here and their values from the core's
    /// migration) is refused before the schema below is applied to it: a
    /// newer envol's tables are never altered by an older one. Opening a
    /// current database writes nothing.
    pub fn open(path: &Path) -> Result<Store, OpenError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted rows (a destroyed key's sealed material) are overwritten,
        // not left in free pages: crypto-shredding must shred.
        conn.pragma_update(None, "secure_delete", "ON")?;
        let recorded = Self::recorded_schema_version(&conn)?;
        if let Some(found) = &recorded
            && *found != SCHEMA_VERSION.to_string()
            && *found != SCHEMA_VERSION_UNIQUE_IDS_MISSING.to_string()
        {
            return Err(OpenError::Schema {
                found: found.clone(),
            });
        }
        conn.execute_batch(SCHEMA)?;
        // Only a new database or a version-1 one lacks version 2's columns.
        // A current one is left alone: adding them takes the write lock,
        // which every open (read-only commands too) would otherwise contend
        // for with a running server.
        if recorded.as_deref() != Some(SCHEMA_VERSION.to_string().as_str()) {
            Self::add_unique_id_columns(&mut conn)?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Adds version 2's columns where they are missing (a new database, or
    /// one written by version 1), in one transaction.
    fn add_unique_id_columns(conn: &mut Connection) -> Result<(), KmsError> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (table, column) in UNIQUE_ID_COLUMNS {
            let name = column.split(' ').next().unwrap_or(column);
            let present = tx
                .query_row(
                    &format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"),
                    [name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !present {
                tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column}"))?;
            }
        }
        tx.execute_batch(UNIQUE_ID_INDEXES)?;
        tx.commit()?;
        Ok(())
    }

    /// The `schema_version` meta value, if the database has one yet.
    fn recorded_schema_version(conn: &Connection) -> Result<Option<String>, KmsError> {
        let has_meta = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !has_meta {
            return Ok(None);
        }
        let value: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one IMMEDIATE transaction: all of it commits or none.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` on the connection outside any explicit transaction (each
    /// statement is its own): for reads, which need no write lock.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        f(&self.conn())
    }

    // ----- meta -----

    /// A meta value. Takes a connection so that one query serves both a
    /// plain read (`Store::read`) and a transaction (which derefs to one).
    pub fn meta(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>, KmsError> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// A meta value as text.
    pub fn meta_string(conn: &Connection, name: &str) -> Result<Option<String>, KmsError> {
        Ok(Self::meta(conn, name)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_meta(tx: &Transaction<'_>, name: &str, value: &[u8]) -> Result<(), KmsError> {
        tx.execute(
            "INSERT INTO meta(name, value) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            params![name, value],
        )?;
        Ok(())
    }

    // ----- principals -----

    pub fn insert_principal(
        tx: &Transaction<'_>,
        name: &str,
        id: &str,
        arn: &str,
        now_ms: i64,
    ) -> Result<(), KmsError> {
        tx.execute(
            "INSERT INTO principals(name, id, arn, created) VALUES (?1, ?2, ?3, ?4)",
            params![name, id, arn, now_ms],
        )?;
        Ok(())
    }

    /// Whether a unique id is taken (by a principal that exists now).
    pub fn principal_id_taken(tx: &Transaction<'_>, id: &str) -> Result<bool, KmsError> {
        Ok(tx
            .query_row("SELECT 1 FROM principals WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// The unique id of the principal with this ARN, if it exists.
    pub fn principal_id_by_arn(conn: &Connection, arn: &str) -> Result<Option<String>, KmsError> {
        Ok(conn
            .query_row("SELECT id FROM principals WHERE arn = ?1", [arn], |r| {
                r.get(0)
            })
            .optional()?)
    }

    // ----- the version 1 → 2 migration (unique ids) -----

    /// Principals without a unique id yet: (name, arn).
    pub fn principals_without_id(tx: &Transaction<'_>) -> Result<Vec<(String, String)>, KmsError> {
        let mut stmt = tx.prepare("SELECT name, arn FROM principals WHERE id IS NULL")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_principal_id(tx: &Transaction<'_>, name: &str, id: &str) -> Result<(), KmsError> {
        tx.execute(
            "UPDATE principals SET id = ?2 WHERE name = ?1",
            params![name, id],
        )?;
        Ok(())
    }

    /// Every key's id and policy text, inside a transaction.
    pub fn key_policies(tx: &Transaction<'_>) -> Result<Vec<(String, String)>, KmsError> {
        let mut stmt = tx.prepare("SELECT key_id, policy FROM keys ORDER BY key_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_policy_principals(
        tx: &Transaction<'_>,
        key_id: &str,
        bindings: &BTreeMap<String, String>,
    ) -> Result<(), KmsError> {
        tx.execute(
            "UPDATE keys SET policy_principals = ?2 WHERE key_id = ?1",
            params![key_id, bindings_json(bindings)],
        )?;
        Ok(())
    }

    /// Binds every grant to the ids of its grantee and retiring principal
    /// as they exist now (no such principal: no id, and the grant matches
    /// nobody).
    pub fn bind_grants_to_principal_ids(tx: &Transaction<'_>) -> Result<(), KmsError> {
        tx.execute_batch(
            "UPDATE grants SET
                grantee_id = (SELECT id FROM principals WHERE arn = grants.grantee),
                retiring_id = (SELECT id FROM principals WHERE arn = grants.retiring)",
        )?;
        Ok(())
    }

    pub fn insert_access_key(
        tx: &Transaction<'_>,
        access_key_id: &str,
        principal: &str,
        sealed_secret: &[u8],
        now_ms: i64,
    ) -> Result<(), KmsError> {
        tx.execute(
            "INSERT INTO access_keys(access_key_id, principal, sealed_secret, created)
             VALUES (?1, ?2, ?3, ?4)",
            params![access_key_id, principal, sealed_secret, now_ms],
        )?;
        Ok(())
    }

    pub fn principal_exists(&self, name: &str) -> Result<bool, KmsError> {
        Ok(self
            .conn()
            .query_row("SELECT 1 FROM principals WHERE name = ?1", [name], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// Removes a principal and (by cascade) its access keys. Returns whether it existed.
    pub fn remove_principal(&self, name: &str) -> Result<bool, KmsError> {
        let n = self
            .conn()
            .execute("DELETE FROM principals WHERE name = ?1", [name])?;
        Ok(n > 0)
    }

    pub fn list_principals(&self) -> Result<Vec<PrincipalRow>, KmsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT p.name, p.arn, p.created, a.access_key_id, p.id
             FROM principals p LEFT JOIN access_keys a ON a.principal = p.name
             ORDER BY p.created, p.name, a.created",
        )?;
        let mut out: Vec<PrincipalRow> = Vec::new();
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        for row in rows {
            let (name, arn, created_ms, akid, id) = row?;
            match out.last_mut() {
                Some(last) if last.name == name => last.access_key_ids.extend(akid),
                _ => out.push(PrincipalRow {
                    name,
                    id: id.unwrap_or_default(),
                    arn,
                    created_ms,
                    access_key_ids: akid.into_iter().collect(),
                }),
            }
        }
        Ok(out)
    }

    /// The principal (ARN, unique id) and sealed secret behind an access
    /// key id. A principal without an id (a version-1 database not yet
    /// migrated) has none: it cannot authenticate.
    pub fn access_key(
        &self,
        access_key_id: &str,
    ) -> Result<Option<(String, String, Vec<u8>)>, KmsError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT p.arn, p.id, a.sealed_secret FROM access_keys a
                 JOIN principals p ON p.name = a.principal
                 WHERE a.access_key_id = ?1 AND p.id IS NOT NULL",
                [access_key_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    // ----- keys -----

    pub fn insert_key(tx: &Transaction<'_>, k: &KeyRow) -> Result<(), KmsError> {
        tx.execute(
            "INSERT INTO keys(key_id, arn, description, key_usage, key_spec, state, created,
                              policy, deletion_date, rotation_period_days, next_rotation, creator,
                              policy_principals)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                k.key_id,
                k.arn,
                k.description,
                k.key_usage,
                k.key_spec,
                k.state.as_str(),
                k.created_ms,
                k.policy,
                k.deletion_date_ms,
                k.rotation_period_days,
                k.next_rotation_ms,
                k.creator,
                bindings_json(&k.policy_principals)
            ],
        )?;
        Ok(())
    }

    /// Writes back every mutable column of a key.
    pub fn update_key(tx: &Transaction<'_>, k: &KeyRow) -> Result<(), KmsError> {
        tx.execute(
            "UPDATE keys SET description = ?2, state = ?3, policy = ?4, deletion_date = ?5,
                    rotation_period_days = ?6, next_rotation = ?7, policy_principals = ?8
             WHERE key_id = ?1",
            params![
                k.key_id,
                k.description,
                k.state.as_str(),
                k.policy,
                k.deletion_date_ms,
                k.rotation_period_days,
                k.next_rotation_ms,
                bindings_json(&k.policy_principals)
            ],
        )?;
        Ok(())
    }

    fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
        Ok(KeyRow {
            key_id: r.get(0)?,
            arn: r.get(1)?,
            description: r.get(2)?,
            key_usage: r.get(3)?,
            key_spec: r.get(4)?,
            state: {
                let text: String = r.get(5)?;
                text.parse().map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        5,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?
            },
            created_ms: r.get(6)?,
            policy: r.get(7)?,
            deletion_date_ms: r.get(8)?,
            rotation_period_days: r.get(9)?,
            next_rotation_ms: r.get(10)?,
            creator: r.get(11)?,
            policy_principals: {
                // NULL before the version-2 migration bound the policy:
                // no bindings, so its ARNs match nobody until then.
                let text: Option<String> = r.get(12)?;
                match text {
                    None => BTreeMap::new(),
                    Some(t) => serde_json::from_str(&t).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            12,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?,
                }
            },
        })
    }

    const KEY_COLUMNS: &'static str = "key_id, arn, description, key_usage, key_spec, state, created, policy, deletion_date, rotation_period_days, next_rotation, creator, policy_principals";

    pub fn key(&self, key_id: &str) -> Result<Option<KeyRow>, KmsError> {
        let sql = format!("SELECT {} FROM keys WHERE key_id = ?1", Self::KEY_COLUMNS);
        Ok(self
            .conn()
            .query_row(&sql, [key_id], Self::key_from_row)
            .optional()?)
    }

    /// How many keys are in each stored state (the metrics' keys by state).
    pub fn count_keys_by_state(&self) -> Result<Vec<(String, u64)>, KmsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM keys GROUP BY state")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        rows.map(|row| {
            let (state, n) = row?;
            Ok((state, u64::try_from(n).unwrap_or(0)))
        })
        .collect()
    }

    /// Keys in key-id order, starting after `after`, at most `limit`.
    pub fn list_keys(&self, after: Option<&str>, limit: usize) -> Result<Vec<KeyRow>, KmsError> {
        let sql = format!(
            "SELECT {} FROM keys WHERE key_id > ?1 ORDER BY key_id LIMIT ?2",
            Self::KEY_COLUMNS
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(
            params![after.unwrap_or(""), limit as i64],
            Self::key_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn insert_version(
        tx: &Transaction<'_>,
        key_id: &str,
        v: &VersionRow,
    ) -> Result<(), KmsError> {
        tx.execute(
            "INSERT INTO key_versions(key_id, version, sealed_material, created, rotation_type)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                key_id,
                v.version,
                v.sealed_material,
                v.created_ms,
                v.rotation_type
            ],
        )?;
        Ok(())
    }

    fn version_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
        Ok(VersionRow {
            version: r.get(0)?,
            sealed_material: r.get(1)?,
            created_ms: r.get(2)?,
            rotation_type: r.get(3)?,
        })
    }

    pub fn version(&self, key_id: &str, version: u32) -> Result<Option<VersionRow>, KmsError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT version, sealed_material, created, rotation_type FROM key_versions
                 WHERE key_id = ?1 AND version = ?2",
                params![key_id, version],
                Self::version_from_row,
            )
            .optional()?)
    }

    /// The newest version: the one new ciphertexts are made with.
    pub fn newest_version(&self, key_id: &str) -> Result<Option<VersionRow>, KmsError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT version, sealed_material, created, rotation_type FROM key_versions
                 WHERE key_id = ?1 ORDER BY version DESC LIMIT 1",
                [key_id],
                Self::version_from_row,
            )
            .optional()?)
    }

    pub fn versions(&self, key_id: &str) -> Result<Vec<VersionRow>, KmsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT version, sealed_material, created, rotation_type FROM key_versions
             WHERE key_id = ?1 ORDER BY version",
        )?;
        let rows = stmt.query_map([key_id], Self::version_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every (key id, version, sealed material): for integrity checks.
    pub fn all_versions(&self) -> Result<Vec<(String, VersionRow)>, KmsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT key_id, version, sealed_material, created, rotation_type FROM key_versions
             ORDER BY key_id, version",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                VersionRow {
                    version: r.get(1)?,
                    sealed_material: r.get(2)?,
                    created_ms: r.get(3)?,
                    rotation_type: r.get(4)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn insert_tag(
        tx: &Transaction<'_>,
        key_id: &str,
        tag_key: &str,
        tag_value: &str,
    ) -> Result<(), KmsError> {
        tx.execute(
            "INSERT INTO tags(key_id, tag_key, tag_value) VALUES (?1, ?2, ?3)
             ON CONFLICT(key_id, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
            params![key_id, tag_key, tag_value],
        )?;
        Ok(())
    }

    /// Removes tags from a key; keys it does not have are ignored, as AWS.
    pub fn delete_tags(
        tx: &Transaction<'_>,
        key_id: &str,
        tag_keys: &[String],
    ) -> Result<(), KmsError> {
        for k in tag_keys {
            tx.execute(
                "DELETE FROM tags WHERE key_id = ?1 AND tag_key = ?2",
                params![key_id, k],
            )?;
        }
        Ok(())
    }

    /// How many tags a key has (inside a transaction, to enforce the limit).
    pub fn count_tags(tx: &Transaction<'_>, key_id: &str) -> Result<u64, KmsError> {
        Ok(tx.query_row(
            "SELECT COUNT(*) FROM tags WHERE key_id = ?1",
            [key_id],
            |r| r.get(0),
        )?)
    }

    /// A key's tags in tag-key order, after `after`, at most `limit`.
    pub fn list_tags(
        &self,
        key_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TagRow>, KmsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT tag_key, tag_value FROM tags WHERE key_id = ?1 AND tag_key > ?2
             ORDER BY tag_key LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![key_id, after.unwrap_or(""), limit as i64], |r| {
            Ok(TagRow {
                key: r.get(0)?,
                value: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ----- aliases -----

    pub fn alias(&self, name: &str) -> Result<Option<AliasRow>, KmsError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, key_id, created, updated FROM aliases WHERE name = ?1",
                [name],
                |r| {
                    Ok(AliasRow {
                        name: r.get(0)?,
                        key_id: r.get(1)?,
                        created_ms: r.get(2)?,
                        updated_ms: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Aliases in name order after `after`, optionally only those of one key.
    pub fn list_aliases(
        &self,
        key_id: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AliasRow>, KmsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, key_id, created, updated FROM aliases
             WHERE name > ?1 AND (?2 IS NULL OR key_id = ?2)
             ORDER BY name LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![after.unwrap_or(""), key_id, limit as i64], |r| {
            Ok(AliasRow {
                name: r.get(0)?,
                key_id: r.get(1)?,
                created_ms: r.get(2)?,
                updated_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn insert_alias(&self, name: &str, key_id: &str, now_ms: i64) -> Result<bool, KmsError> {
        let n = self.conn().execute(
            "INSERT INTO aliases(name, key_id, created, updated) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(name) DO NOTHING",
            params![name, key_id, now_ms],
        )?;
        Ok(n > 0)
    }

    pub fn update_alias(&self, name: &str, key_id: &str, now_ms: i64) -> Result<bool, KmsError> {
        let n = self.conn().execute(
            "UPDATE aliases SET key_id = ?2, updated = ?3 WHERE name = ?1",
            params![name, key_id, now_ms],
        )?;
        Ok(n > 0)
    }

    pub fn delete_alias(&self, name: &str) -> Result<bool, KmsError> {
        let n = self
            .conn()
            .execute("DELETE FROM aliases WHERE name = ?1", [name])?;
        Ok(n > 0)
    }

    /// Destroys a key: its material (every version), aliases, tags and grants go with it.
    pub fn delete_key(tx: &Transaction<'_>, key_id: &str) -> Result<(), KmsError> {
        tx.execute("DELETE FROM keys WHERE key_id = ?1", [key_id])?;
        Ok(())
    }

    /// Keys whose deletion window has passed at `now_ms`.
    pub fn keys_due_for_deletion(&self, now_ms: i64) -> Result<Vec<String>, KmsError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT key_id FROM keys WHERE state = ?1 AND deletion_date <= ?2")?;
        let rows = stmt.query_map(params![KeyState::PendingDeletion.as_str(), now_ms], |r| {
            r.get(0)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ----- rotation -----

    /// A key as seen inside a transaction (to re-check state before a change).
    pub fn key_in(tx: &Transaction<'_>, key_id: &str) -> Result<Option<KeyRow>, KmsError> {
        let sql = format!("SELECT {} FROM keys WHERE key_id = ?1", Self::KEY_COLUMNS);
        Ok(tx
            .query_row(&sql, [key_id], Self::key_from_row)
            .optional()?)
    }

    /// The highest version number of a key inside a transaction (0 if none).
    pub fn max_version(tx: &Transaction<'_>, key_id: &str) -> Result<u32, KmsError> {
        Ok(tx.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM key_versions WHERE key_id = ?1",
            [key_id],
            |r| r.get(0),
        )?)
    }

    /// How many versions of a key came from rotations of `rotation_type`.
    pub fn count_rotations(
        tx: &Transaction<'_>,
        key_id: &str,
        rotation_type: &str,
    ) -> Result<u32, KmsError> {
        Ok(tx.query_row(
            "SELECT COUNT(*) FROM key_versions WHERE key_id = ?1 AND rotation_type = ?2",
            params![key_id, rotation_type],
            |r| r.get(0),
        )?)
    }

    /// Versions made by rotations (not the original material), oldest first,
    /// after version `after`, at most `limit`.
    pub fn list_rotations(
        &self,
        key_id: &str,
        after: u32,
        limit: usize,
    ) -> Result<Vec<VersionRow>, KmsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT version, sealed_material, created, rotation_type FROM key_versions
             WHERE key_id = ?1 AND rotation_type IS NOT NULL AND version > ?2
             ORDER BY version LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![key_id, after, limit as i64], Self::version_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Enabled keys whose automatic rotation is due at `now_ms`. Disabled keys
    /// and keys pending deletion keep their schedule but are not rotated.
    pub fn keys_due_for_rotation(&self, now_ms: i64) -> Result<Vec<String>, KmsError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT key_id FROM keys WHERE state = ?1
             AND rotation_period_days IS NOT NULL AND next_rotation <= ?2",
        )?;
        let rows = stmt.query_map(params![KeyState::Enabled.as_str(), now_ms], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ----- grants -----

    const GRANT_COLUMNS: &'static str = "seq, grant_id, key_id, name, grantee, retiring, operations, constraints, issuing_account, created, grantee_id, retiring_id";

    fn grant_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<GrantRow> {
        Ok(GrantRow {
            seq: r.get(0)?,
            grant_id: r.get(1)?,
            key_id: r.get(2)?,
            name: r.get(3)?,
            grantee: r.get(4)?,
            retiring: r.get(5)?,
            operations: r.get(6)?,
            constraints: r.get(7)?,
            issuing_account: r.get(8)?,
            created_ms: r.get(9)?,
            grantee_id: r.get(10)?,
            retiring_id: r.get(11)?,
        })
    }

    /// Inserts a grant (its `seq` is assigned by the database).
    pub fn insert_grant(tx: &Transaction<'_>, g: &GrantRow) -> Result<(), KmsError> {
        tx.execute(
            "INSERT INTO grants(grant_id, key_id, name, grantee, retiring, operations,
                                constraints, issuing_account, created, grantee_id, retiring_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                g.grant_id,
                g.key_id,
                g.name,
                g.grantee,
                g.retiring,
                g.operations,
                g.constraints,
                g.issuing_account,
                g.created_ms,
                g.grantee_id,
                g.retiring_id
            ],
        )?;
        Ok(())
    }

    /// Grants matching `filter`, in creation order, after `after_seq`, at most `limit`.
    pub fn list_grants(
        &self,
        filter: GrantFilter<'_>,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<GrantRow>, KmsError> {
        let sql = format!(
            "SELECT {} FROM grants
             WHERE seq > ?1 AND (?2 IS NULL OR key_id = ?2) AND (?3 IS NULL OR grant_id = ?3)
               AND (?4 IS NULL OR grantee = ?4) AND (?5 IS NULL OR retiring = ?5)
               AND (?7 IS NULL OR grantee_id = ?7) AND (?8 IS NULL OR retiring_id = ?8)
             ORDER BY seq LIMIT ?6",
            Self::GRANT_COLUMNS
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(
            params![
                after_seq,
                filter.key_id,
                filter.grant_id,
                filter.grantee,
                filter.retiring,
                limit as i64,
                filter.grantee_id,
                filter.retiring_id
            ],
            Self::grant_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every grant on `key_id` for the principal with unique id
    /// `grantee_id`: what authorization consults. (Not by ARN: a grant made
    /// for a user removed since names a principal that no longer exists.)
    pub fn grants_for(&self, key_id: &str, grantee_id: &str) -> Result<Vec<GrantRow>, KmsError> {
        self.list_grants(
            GrantFilter {
                key_id: Some(key_id),
                grantee_id: Some(grantee_id),
                ..GrantFilter::default()
            },
            0,
            usize::MAX >> 1,
        )
    }

    pub fn grant(&self, grant_id: &str) -> Result<Option<GrantRow>, KmsError> {
        let sql = format!(
            "SELECT {} FROM grants WHERE grant_id = ?1",
            Self::GRANT_COLUMNS
        );
        Ok(self
            .conn()
            .query_row(&sql, [grant_id], Self::grant_from_row)
            .optional()?)
    }

    pub fn count_grants(tx: &Transaction<'_>, key_id: &str) -> Result<u64, KmsError> {
        Ok(tx.query_row(
            "SELECT COUNT(*) FROM grants WHERE key_id = ?1",
            [key_id],
            |r| r.get(0),
        )?)
    }

    /// Deletes a grant. Returns whether it existed.
    pub fn delete_grant(&self, grant_id: &str) -> Result<bool, KmsError> {
        let n = self
            .conn()
            .execute("DELETE FROM grants WHERE grant_id = ?1", [grant_id])?;
        Ok(n > 0)
    }

    /// Moves the WAL's contents into the database and truncates the WAL, so
    /// that deleted pages do not linger there either.
    pub fn checkpoint(&self) -> Result<(), KmsError> {
        self.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// A key policy's principal bindings as stored: a JSON object ARN → id.
fn bindings_json(bindings: &BTreeMap<String, String>) -> String {
    serde_json::to_string(bindings).unwrap_or_else(|_| "{}".to_string())
}
