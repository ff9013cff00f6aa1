//! Image-signing policies (issue 15): one row per registry namespace. Creating a second
//! policy for a namespace fails (the namespace is the key), and updates and deletes are
//! compare-and-set on the row's `version`, so two calls (or two replicas) never both
//! win. Selectors are kept as JSON arrays of the patterns as written; `signing::rules`
//! checks and compiles them.

use uuid::Uuid;

use super::sql::{Db, Row, Value, args};
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

fn row(r: &Row) -> Result<PolicyRow, StoreError> {
    let namespace: String = r.get(0)?;
    let repositories: String = r.get(7)?;
    let tags: String = r.get(8)?;
    let trigger: String = r.get(10)?;
    let bad = |what: &str| StoreError::Corrupt(format!("signing policy {namespace:?}: {what}"));
    let decode =
        |text: &str, what: &str| serde_json::from_str::<Vec<String>>(text).map_err(|_| bad(what));
    Ok(PolicyRow {
        name: r.get(1)?,
        description: r.get(2)?,
        enabled: r.get(3)?,
        key_ref: r.get(4)?,
        key_id: r.get::<Uuid>(5).map_err(|_| bad("key_id"))?,
        domain: r.get(6)?,
        repositories: decode(&repositories, "repositories")?,
        tags: decode(&tags, "tags")?,
        untagged: r.get(9)?,
        trigger: Trigger::parse(&trigger).ok_or_else(|| bad("trigger"))?,
        cron: r.get(11)?,
        create_time: r.get(12)?,
        update_time: r.get(13)?,
        version: r.get(14)?,
        namespace,
    })
}

impl Store {
    /// Stores a new policy (its `version` is set to 1). False if the namespace has one.
    pub(crate) fn insert_signing_policy(&self, p: &PolicyRow) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = c.execute(
                &format!(
                    "INSERT INTO signing_policies ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 1) \
                     ON CONFLICT (namespace) DO NOTHING"
                ),
                &values(p)[..14],
            )?;
            Ok(n == 1)
        })
    }

    /// The namespace's policy, if it has one.
    pub(crate) fn signing_policy(&self, namespace: &str) -> Result<Option<PolicyRow>, StoreError> {
        self.with(|c| {
            c.query_opt(
                &format!("SELECT {COLUMNS} FROM signing_policies WHERE namespace = ?1"),
                args![namespace],
            )?
            .as_ref()
            .map(row)
            .transpose()
        })
    }

    /// Every policy, by namespace.
    pub(crate) fn signing_policies(&self) -> Result<Vec<PolicyRow>, StoreError> {
        self.with(|c| {
            c.query(
                &format!("SELECT {COLUMNS} FROM signing_policies ORDER BY namespace"),
                &[],
            )?
            .iter()
            .map(row)
            .collect()
        })
    }

    /// Replaces the namespace's policy with `p` if its version is still `p.version`;
    /// returns the new version. `None`: the namespace has no policy;
    /// `Err(Conflict)`: another call changed it first.
    pub(crate) fn update_signing_policy(&self, p: &PolicyRow) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            // Numbered as in `values`, less the create time (left as it was): every
            // bound parameter is used, as PostgreSQL requires.
            let mut v = values(p).to_vec();
            v.remove(12);
            let n = c.execute(
                "UPDATE signing_policies SET name = ?2, description = ?3, enabled = ?4, \
                 key_ref = ?5, key_id = ?6, domain = ?7, repositories = ?8, tags = ?9, \
                 untagged = ?10, trigger = ?11, cron = ?12, update_time = ?13, \
                 version = version + 1 \
                 WHERE namespace = ?1 AND version = ?14",
                &v,
            )?;
            if n == 1 {
                Ok(Some(p.version + 1))
            } else if exists(c, &p.namespace)? {
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
        self.with(|c| {
            let n = c.execute(
                "DELETE FROM signing_policies WHERE namespace = ?1 AND version = ?2",
                args![namespace, version],
            )?;
            if n == 1 {
                Ok(true)
            } else if exists(c, namespace)? {
                Err(StoreError::Conflict)
            } else {
                Ok(false)
            }
        })
    }
}

/// A policy's columns in `COLUMNS` order, its version last: what insert (the first
/// 14; the version starts at 1) and update bind.
fn values(p: &PolicyRow) -> [Value; 15] {
    [
        Value::from(&p.namespace),
        Value::from(&p.name),
        Value::from(&p.description),
        Value::from(p.enabled),
        Value::from(&p.key_ref),
        Value::from(p.key_id),
        Value::from(&p.domain),
        Value::from(json(&p.repositories)),
        Value::from(json(&p.tags)),
        Value::from(p.untagged),
        Value::from(p.trigger.name()),
        Value::from(&p.cron),
        Value::from(p.create_time),
        Value::from(p.update_time),
        Value::from(p.version),
    ]
}

/// Whether the namespace has a policy (after a compare-and-set matched no row: was it
/// changed, or is it gone?).
fn exists(c: &mut dyn Db, namespace: &str) -> Result<bool, StoreError> {
    Ok(c.query_opt(
        "SELECT 1 FROM signing_policies WHERE namespace = ?1",
        args![namespace],
    )?
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

    /// Runs `test` on a store of each engine.
    fn on_each(test: impl Fn(Store)) {
        for db in crate::store::tests::databases() {
            test(db.open("a"));
        }
    }

    #[test]
    fn one_policy_per_namespace_read_back_whole() {
        on_each(|s| {
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
        });
    }

    #[test]
    fn updates_and_deletes_are_compare_and_set() {
        on_each(|s| {
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
        });
    }

    #[test]
    fn concurrent_creates_of_one_namespace_make_one_policy() {
        on_each(|s| {
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
        });
    }

    #[test]
    fn a_bad_row_is_reported_not_guessed() {
        on_each(|s| {
            assert!(s.insert_signing_policy(&policy("team")).unwrap());
            s.with(|c| {
                c.execute(
                    "UPDATE signing_policies SET tags = 'not json' WHERE namespace = 'team'",
                    &[],
                )?;
                Ok(())
            })
            .unwrap();
            assert!(matches!(
                s.signing_policy("team"),
                Err(StoreError::Corrupt(m)) if m.contains("tags")
            ));
        });
    }
}
