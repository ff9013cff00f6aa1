//! Image-signing policies (issue 15): one row per registry namespace. Creating a second
//! policy for a namespace fails (the namespace is the key), and updates and deletes are
//! compare-and-set on the row's `version`, so two calls (or two replicas) never both
//! win. Selectors are kept as JSON arrays of the patterns as written; `signing::rules`
//! checks and compiles them.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use uuid::Uuid;

use super::{Store, StoreError};

/// Created with the rest of the schema at `Store::open`.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS signing_policies (
    namespace TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    enabled INTEGER NOT NULL,
    key_ref TEXT NOT NULL,
    key_id TEXT NOT NULL,
    domain TEXT NOT NULL,
    repositories TEXT NOT NULL,
    tags TEXT NOT NULL,
    untagged INTEGER NOT NULL,
    trigger TEXT NOT NULL CHECK (trigger IN ('event', 'manual', 'scheduled')),
    cron TEXT,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    version INTEGER NOT NULL
);
";

/// When a policy signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// On every matching push (the default).
    Event,
    /// Only when asked (SignImage, SignNamespace).
    Manual,
    /// On its cron schedule.
    Scheduled,
}

impl Trigger {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Trigger::Event => "event",
            Trigger::Manual => "manual",
            Trigger::Scheduled => "scheduled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Trigger> {
        [Trigger::Event, Trigger::Manual, Trigger::Scheduled]
            .into_iter()
            .find(|t| t.name() == s)
    }
}

/// A signature policy as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyRow {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) enabled: bool,
    /// The key as the caller named it (a key id or `alias/...`).
    pub(crate) key_ref: String,
    /// What it resolved to when the policy was written.
    pub(crate) key_id: Uuid,
    /// The registry host written into signatures' docker-reference.
    pub(crate) domain: String,
    pub(crate) repositories: Vec<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) untagged: bool,
    pub(crate) trigger: Trigger,
    pub(crate) cron: Option<String>,
    /// Unix seconds.
    pub(crate) create_time: i64,
    pub(crate) update_time: i64,
    /// 1 when created, one more at each update.
    pub(crate) version: i64,
}

const COLUMNS: &str = "namespace, name, description, enabled, key_ref, key_id, domain, \
     repositories, tags, untagged, trigger, cron, create_time, update_time, version";

fn json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

fn row(r: &Row<'_>) -> rusqlite::Result<Result<PolicyRow, StoreError>> {
    let namespace: String = r.get(0)?;
    let key_id: String = r.get(5)?;
    let repositories: String = r.get(7)?;
    let tags: String = r.get(8)?;
    let trigger: String = r.get(10)?;
    let bad = |what: &str| StoreError::Corrupt(format!("signing policy {namespace:?}: {what}"));
    let decode =
        |text: &str, what: &str| serde_json::from_str::<Vec<String>>(text).map_err(|_| bad(what));
    let parsed = (|| {
        Ok(PolicyRow {
            name: r.get(1).map_err(StoreError::from)?,
            description: r.get(2).map_err(StoreError::from)?,
            enabled: r.get(3).map_err(StoreError::from)?,
            key_ref: r.get(4).map_err(StoreError::from)?,
            key_id: Uuid::parse_str(&key_id).map_err(|_| bad("key_id"))?,
            domain: r.get(6).map_err(StoreError::from)?,
            repositories: decode(&repositories, "repositories")?,
            tags: decode(&tags, "tags")?,
            untagged: r.get(9).map_err(StoreError::from)?,
            trigger: Trigger::parse(&trigger).ok_or_else(|| bad("trigger"))?,
            cron: r.get(11).map_err(StoreError::from)?,
            create_time: r.get(12).map_err(StoreError::from)?,
            update_time: r.get(13).map_err(StoreError::from)?,
            version: r.get(14).map_err(StoreError::from)?,
            namespace: namespace.clone(),
        })
    })();
    Ok(parsed)
}

impl Store {
    /// Stores a new policy (its `version` is set to 1). False if the namespace has one.
    pub(crate) fn insert_signing_policy(&self, p: &PolicyRow) -> Result<bool, StoreError> {
        self.with(|conn| {
            let n = conn.execute(
                &format!(
                    "INSERT INTO signing_policies ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 1) \
                     ON CONFLICT (namespace) DO NOTHING"
                ),
                params_from_iter(&values(p)[..14]),
            )?;
            Ok(n == 1)
        })
    }

    /// The namespace's policy, if it has one.
    pub(crate) fn signing_policy(&self, namespace: &str) -> Result<Option<PolicyRow>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM signing_policies WHERE namespace = ?1"),
                [namespace],
                row,
            )
            .optional()?
            .transpose()
        })
    }

    /// Every policy, by namespace.
    pub(crate) fn signing_policies(&self) -> Result<Vec<PolicyRow>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM signing_policies ORDER BY namespace"
            ))?;
            let rows = stmt.query_map([], row)?;
            rows.map(|r| r?).collect()
        })
    }

    /// Replaces the namespace's policy with `p` if its version is still `p.version`;
    /// returns the new version. `None`: the namespace has no policy;
    /// `Err(Conflict)`: another call changed it first.
    pub(crate) fn update_signing_policy(&self, p: &PolicyRow) -> Result<Option<i64>, StoreError> {
        self.with(|conn| {
            // Numbered as in `values` (?13, the create time, is left as it was).
            let n = conn.execute(
                "UPDATE signing_policies SET name = ?2, description = ?3, enabled = ?4, \
                 key_ref = ?5, key_id = ?6, domain = ?7, repositories = ?8, tags = ?9, \
                 untagged = ?10, trigger = ?11, cron = ?12, update_time = ?14, \
                 version = version + 1 \
                 WHERE namespace = ?1 AND version = ?15",
                params_from_iter(&values(p)),
            )?;
            if n == 1 {
                Ok(Some(p.version + 1))
            } else if exists(conn, &p.namespace)? {
                Err(StoreError::Conflict)
            } else {
                Ok(None)
            }
        })
    }

    /// Deletes the namespace's policy if its version is still `version`. False: no
    /// such policy; `Err(Conflict)`: it changed since it was read.
    pub(crate) fn delete_signing_policy(
        &self,
        namespace: &str,
        version: i64,
    ) -> Result<bool, StoreError> {
        self.with(|conn| {
            let n = conn.execute(
                "DELETE FROM signing_policies WHERE namespace = ?1 AND version = ?2",
                params![namespace, version],
            )?;
            if n == 1 {
                Ok(true)
            } else if exists(conn, namespace)? {
                Err(StoreError::Conflict)
            } else {
                Ok(false)
            }
        })
    }
}

/// A policy's columns in `COLUMNS` order, its version last: what insert (the first
/// 14; the version starts at 1) and update (all 15) bind.
fn values(p: &PolicyRow) -> [Value; 15] {
    [
        p.namespace.clone().into(),
        p.name.clone().into(),
        p.description.clone().into(),
        p.enabled.into(),
        p.key_ref.clone().into(),
        p.key_id.to_string().into(),
        p.domain.clone().into(),
        json(&p.repositories).into(),
        json(&p.tags).into(),
        p.untagged.into(),
        p.trigger.name().to_string().into(),
        p.cron.clone().into(),
        p.create_time.into(),
        p.update_time.into(),
        p.version.into(),
    ]
}

/// Whether the namespace has a policy (after a compare-and-set matched no row: was it
/// changed, or is it gone?).
fn exists(conn: &Connection, namespace: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM signing_policies WHERE namespace = ?1",
            [namespace],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ns: &str) -> PolicyRow {
        PolicyRow {
            namespace: ns.into(),
            name: format!("{ns}-policy"),
            description: "signs releases".into(),
            enabled: true,
            key_ref: "alias/release-signing".into(),
            key_id: Uuid::new_v4(),
            domain: "127.0.0.1:5000".into(),
            repositories: vec!["app-*".into(), "{web,api}/**".into()],
            tags: vec!["v*".into()],
            untagged: false,
            trigger: Trigger::Event,
            cron: None,
            create_time: 1_765_040_000,
            update_time: 1_765_040_000,
            version: 1,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("hsmd.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn one_policy_per_namespace_read_back_whole() {
        let (_d, s) = store();
        let p = policy("team");
        assert!(s.insert_signing_policy(&p).unwrap());
        assert_eq!(s.signing_policy("team").unwrap(), Some(p.clone()));
        // A second policy for the namespace is refused, and the first is unchanged.
        let other = PolicyRow {
            name: "another".into(),
            ..policy("team")
        };
        assert!(!s.insert_signing_policy(&other).unwrap());
        assert_eq!(s.signing_policy("team").unwrap(), Some(p.clone()));
        let mut q = policy("other");
        q.trigger = Trigger::Scheduled;
        q.cron = Some("30 2 * * *".into());
        q.untagged = true;
        q.tags.clear();
        assert!(s.insert_signing_policy(&q).unwrap());
        let all = s.signing_policies().unwrap();
        assert_eq!(all, vec![q, p]);
        assert_eq!(s.signing_policy("nobody").unwrap(), None);
    }

    #[test]
    fn updates_and_deletes_are_compare_and_set() {
        let (_d, s) = store();
        let p = policy("team");
        assert!(s.insert_signing_policy(&p).unwrap());
        let mut a = p.clone();
        a.enabled = false;
        a.update_time += 10;
        assert_eq!(s.update_signing_policy(&a).unwrap(), Some(2));
        // A writer that read version 1 too loses, and changes nothing.
        let mut b = p.clone();
        b.trigger = Trigger::Manual;
        assert!(matches!(
            s.update_signing_policy(&b),
            Err(StoreError::Conflict)
        ));
        let now = s.signing_policy("team").unwrap().unwrap();
        assert_eq!(
            (now.enabled, now.trigger, now.version),
            (false, Trigger::Event, 2)
        );
        assert!(matches!(
            s.delete_signing_policy("team", 1),
            Err(StoreError::Conflict)
        ));
        assert!(s.delete_signing_policy("team", 2).unwrap());
        assert!(!s.delete_signing_policy("team", 2).unwrap());
        assert_eq!(s.update_signing_policy(&a).unwrap(), None);
        assert_eq!(s.signing_policy("team").unwrap(), None);
    }

    #[test]
    fn concurrent_creates_of_one_namespace_make_one_policy() {
        let (_d, s) = store();
        let s = std::sync::Arc::new(s);
        let wins: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let s = s.clone();
                    scope.spawn(move || {
                        let p = PolicyRow {
                            name: format!("p{i}"),
                            ..policy("team")
                        };
                        usize::from(s.insert_signing_policy(&p).unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
        assert_eq!(s.signing_policies().unwrap().len(), 1);
    }

    #[test]
    fn a_bad_row_is_reported_not_guessed() {
        let (_d, s) = store();
        assert!(s.insert_signing_policy(&policy("team")).unwrap());
        s.with(|c| {
            c.execute(
                "UPDATE signing_policies SET tags = 'not json' WHERE namespace = 'team'",
                [],
            )?;
            Ok(())
        })
        .unwrap();
        assert!(matches!(
            s.signing_policy("team"),
            Err(StoreError::Corrupt(m)) if m.contains("tags")
        ));
    }
}
