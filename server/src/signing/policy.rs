//! A signature policy: the stored row checked and compiled (its scope and schedule),
//! and the key it signs with, checked for what image signing allows. Creating and
//! updating run here, on the key manager (they block on SQLite); the API authorizes.

use crate::domain::record::KeyRecord;
use crate::domain::spec::{KeySpec, KeyUsage, SigningAlgorithm};
use crate::keys::{KeyError, KeyManager, KeyRef};
use crate::store::{PolicyRow, StoreError, Trigger};

use super::rules::{self, Pattern, Schedule, Scope};
use super::{SigningError, shown};

/// What a caller asks a policy to be (create, or the result of an update).
#[derive(Debug, Clone)]
pub(crate) struct PolicySpec {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) enabled: bool,
    /// Key id or `alias/...`.
    pub(crate) key_ref: String,
    /// None: the registry's host.
    pub(crate) domain: Option<String>,
    /// Empty: every repository (`**`).
    pub(crate) repositories: Vec<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) untagged: bool,
    pub(crate) trigger: Trigger,
    pub(crate) cron: Option<String>,
}

impl PolicySpec {
    /// The spec of a stored policy (to apply an update to).
    pub(crate) fn of(row: &PolicyRow) -> PolicySpec {
        PolicySpec {
            name: row.name.clone(),
            description: row.description.clone(),
            enabled: row.enabled,
            key_ref: row.key_ref.clone(),
            domain: Some(row.domain.clone()),
            repositories: row.repositories.clone(),
            tags: row.tags.clone(),
            untagged: row.untagged,
            trigger: row.trigger,
            cron: row.cron.clone(),
        }
    }
}

/// Longest description kept.
const MAX_DESCRIPTION: usize = 1024;

/// A stored policy with its selectors and schedule compiled.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) row: PolicyRow,
    pub(crate) scope: Scope,
    pub(crate) schedule: Option<Schedule>,
}

impl Policy {
    /// Compiles a row (checked when it was written; checked again, as a row from an
    /// older version or another replica could hold anything).
    pub(crate) fn compile(row: PolicyRow) -> Result<Policy, SigningError> {
        rules::check_name(&row.name)?;
        let compile = |list: &[String]| {
            list.iter()
                .map(|p| Pattern::new(p))
                .collect::<Result<Vec<_>, _>>()
        };
        let scope = Scope {
            repositories: compile(&row.repositories)?,
            tags: compile(&row.tags)?,
            untagged: row.untagged,
        };
        let schedule = match (row.trigger, &row.cron) {
            (Trigger::Scheduled, Some(c)) => Some(Schedule::new(c)?),
            (Trigger::Scheduled, None) => {
                return Err(SigningError::InvalidArgument(
                    "trigger scheduled needs a cron expression (5 fields, or 6 with seconds first; UTC)".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(SigningError::InvalidArgument(
                    "a cron expression is only for trigger scheduled".into(),
                ));
            }
            (_, None) => None,
        };
        Ok(Policy {
            row,
            scope,
            schedule,
        })
    }

    /// Whether a push of `repository` (full, `namespace/...`) with `tag` is in scope.
    pub(crate) fn covers(&self, repository: &str, tag: Option<&str>) -> bool {
        let below = repository
            .strip_prefix(&self.row.namespace)
            .and_then(|r| r.strip_prefix('/'));
        below.is_some_and(|r| self.scope.covers(r, tag))
    }
}

/// Checks a namespace: one path component of a repository name (lower-case letters,
/// digits, and `.` `_` `-` inside).
pub(crate) fn check_namespace(ns: &str) -> Result<(), SigningError> {
    if ns.contains('/') || !super::events::valid_repository(ns) {
        return Err(SigningError::Namespace(shown(ns)));
    }
    Ok(())
}

/// The algorithm images are signed with by a key of this spec (SM2 only where the
/// token has it); usage and state are not looked at.
pub(crate) fn algorithm_of(key: &KeyRecord) -> Result<SigningAlgorithm, SigningError> {
    Ok(match key.spec {
        KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => SigningAlgorithm::RsaPkcs1Sha256,
        KeySpec::EcP256 => SigningAlgorithm::EcdsaSha256,
        KeySpec::EcP384 => SigningAlgorithm::EcdsaSha384,
        KeySpec::Sm2 => {
            // SM2DSA_SM3 needs vendor mechanisms; no token hsmd drives offers them yet.
            return Err(KeyError::MechanismNotSupported {
                feature: "SM2DSA_SM3 image signatures".into(),
                mechanism: "CKM_SM2 / CKM_SM3 (vendor)",
                why: "this token does not offer SM2 signing".into(),
            }
            .into());
        }
        other => {
            return Err(SigningError::KeySpecNotAllowed {
                key: key.id,
                spec: other.name(),
            });
        }
    })
}

/// The algorithm a policy signs with, for a key that may sign images: SIGN_VERIFY,
/// ENABLED, and of a spec images are signed with.
pub(crate) fn algorithm_for(
    m: &KeyManager,
    key: &KeyRecord,
) -> Result<SigningAlgorithm, SigningError> {
    key.require_usage(KeyUsage::SignVerify)
        .map_err(KeyError::from)?;
    let alg = algorithm_of(key)?;
    key.require_enabled(m.now()).map_err(KeyError::from)?;
    Ok(alg)
}

/// Checks `spec` for `namespace` and resolves its key; returns the row to store (at
/// `version`, times `now`) and the key, for the caller to authorize.
pub(crate) fn prepare(
    m: &KeyManager,
    namespace: &str,
    spec: PolicySpec,
    registry_host: Option<&str>,
    created: Option<i64>,
    version: i64,
) -> Result<(Policy, KeyRecord), SigningError> {
    check_namespace(namespace)?;
    if spec.description.chars().count() > MAX_DESCRIPTION {
        return Err(SigningError::InvalidArgument(format!(
            "description is longer than {MAX_DESCRIPTION} characters"
        )));
    }
    let domain = match spec.domain.filter(|d| !d.is_empty()) {
        Some(d) => {
            super::config::parse_url(&format!("https://{d}")).map_err(|_| {
                SigningError::InvalidArgument(format!("domain {:?} is not HOST[:PORT]", shown(&d)))
            })?;
            d
        }
        None => registry_host
            .ok_or(SigningError::RegistryNotConfigured)?
            .to_string(),
    };
    let key_ref = KeyRef::parse(&spec.key_ref)?;
    let now = m.now();
    let row = PolicyRow {
        namespace: namespace.to_string(),
        name: spec.name,
        description: spec.description,
        enabled: spec.enabled,
        key_ref: spec.key_ref,
        key_id: uuid::Uuid::nil(),
        domain,
        repositories: if spec.repositories.is_empty() {
            vec!["**".to_string()]
        } else {
            spec.repositories
        },
        tags: spec.tags,
        untagged: spec.untagged,
        trigger: spec.trigger,
        cron: spec.cron.filter(|c| !c.trim().is_empty()),
        create_time: created.unwrap_or(now),
        update_time: now,
        version,
    };
    let mut policy = Policy::compile(row)?;
    let key = m.resolve(&key_ref)?;
    algorithm_for(m, &key)?;
    policy.row.key_id = key.id;
    Ok((policy, key))
}

/// Stores a new policy.
pub(crate) fn insert(m: &KeyManager, row: &PolicyRow) -> Result<(), SigningError> {
    if !m.store().insert_signing_policy(row)? {
        return Err(SigningError::PolicyExists(row.namespace.clone()));
    }
    Ok(())
}

/// Stores an updated policy if nobody changed it since it was read.
pub(crate) fn replace(m: &KeyManager, row: &PolicyRow) -> Result<PolicyRow, SigningError> {
    match m.store().update_signing_policy(row) {
        Ok(Some(v)) => Ok(PolicyRow {
            version: v,
            ..row.clone()
        }),
        Ok(None) => Err(SigningError::PolicyNotFound(row.namespace.clone())),
        Err(StoreError::Conflict) => Err(SigningError::PolicyChanged(row.namespace.clone())),
        Err(e) => Err(e.into()),
    }
}

/// The namespace's policy.
pub(crate) fn get(m: &KeyManager, namespace: &str) -> Result<PolicyRow, SigningError> {
    check_namespace(namespace)?;
    m.store()
        .signing_policy(namespace)?
        .ok_or_else(|| SigningError::PolicyNotFound(namespace.to_string()))
}

/// Deletes the policy as read (compare-and-set on its version).
pub(crate) fn remove(m: &KeyManager, row: &PolicyRow) -> Result<(), SigningError> {
    match m.store().delete_signing_policy(&row.namespace, row.version) {
        Ok(true) => Ok(()),
        Ok(false) => Err(SigningError::PolicyNotFound(row.namespace.clone())),
        Err(StoreError::Conflict) => Err(SigningError::PolicyChanged(row.namespace.clone())),
        Err(e) => Err(e.into()),
    }
}
