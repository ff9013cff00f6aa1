//! The authorization policy: deny by default; each rule grants some principals some
//! actions on some keys. A principal is named exactly or by glob
//! (`spiffe://corp/payments/*`); actions by name or group (`use`, `manage`, `audit`,
//! `*`); keys by `*`, a key id, an alias glob (`alias/payments-*`) or a tag
//! (`tag:team=payments`, the value may be a glob).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use uuid::Uuid;

use super::action::Action;
use super::glob::Glob;
use crate::domain::record::KeyRecord;

/// A rule as written in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub(crate) principals: Vec<String>,
    pub(crate) actions: Vec<String>,
    #[serde(default)]
    pub(crate) keys: Option<Vec<String>>,
}

/// Which keys a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyPattern {
    Any,
    Id(Uuid),
    Alias(Glob),
    Tag(String, Glob),
}

impl KeyPattern {
    fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(KeyPattern::Any);
        }
        if s.starts_with("alias/") {
            return Ok(KeyPattern::Alias(Glob::new(s)));
        }
        if let Some(tag) = s.strip_prefix("tag:") {
            return match tag.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok(KeyPattern::Tag(k.to_string(), Glob::new(v))),
                _ => Err(format!("'{s}': write tag:NAME=VALUE")),
            };
        }
        Uuid::parse_str(s)
            .ok()
            .filter(|_| s.len() == 36)
            .map(KeyPattern::Id)
            .ok_or_else(|| format!("'{s}' is not *, a key id, alias/GLOB or tag:NAME=VALUE"))
    }

    fn matches(&self, key: &KeyFacts<'_>) -> bool {
        match self {
            KeyPattern::Any => true,
            KeyPattern::Id(id) => key.id == Some(*id),
            KeyPattern::Alias(g) => key.aliases.iter().any(|a| g.matches(a)),
            KeyPattern::Tag(k, v) => key.tags.get(k).is_some_and(|val| v.matches(val)),
        }
    }
}

/// What a rule can see of a key: its id (none yet for a key being created), aliases
/// and tags.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyFacts<'a> {
    pub(crate) id: Option<Uuid>,
    pub(crate) aliases: &'a [String],
    pub(crate) tags: &'a BTreeMap<String, String>,
}

impl<'a> KeyFacts<'a> {
    /// What a rule sees of an existing key.
    pub(crate) fn of(key: &'a KeyRecord) -> Self {
        KeyFacts {
            id: Some(key.id),
            aliases: &key.aliases,
            tags: &key.tags,
        }
    }
}

/// One grant.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    principals: Vec<Glob>,
    actions: BTreeSet<Action>,
    keys: Vec<KeyPattern>,
}

impl Rule {
    /// Checks a rule from the config; `Err((field, problem))`.
    pub(crate) fn parse(raw: &RawRule) -> Result<Rule, (&'static str, String)> {
        if raw.principals.is_empty() || raw.principals.iter().any(|p| p.trim().is_empty()) {
            return Err((
                "principals",
                "list one or more principals (exact or glob)".into(),
            ));
        }
        if raw.actions.is_empty() {
            return Err(("actions", "list one or more actions or groups".into()));
        }
        let mut actions = BTreeSet::new();
        for name in &raw.actions {
            let found = Action::parse(name).ok_or_else(|| {
                (
                    "actions",
                    format!(
                        "unknown action '{name}': use use, manage, audit, * or one of {}",
                        Action::ALL
                            .iter()
                            .map(|a| a.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            actions.extend(found);
        }
        let keys = match &raw.keys {
            Some(keys) if !keys.is_empty() => keys
                .iter()
                .map(|k| KeyPattern::parse(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ("keys", e))?,
            _ if actions.iter().any(|a| a.key_bound()) => {
                return Err((
                    "keys",
                    "these actions are about keys: list the keys (\"*\" for all)".into(),
                ));
            }
            _ => Vec::new(),
        };
        Ok(Rule {
            principals: raw.principals.iter().map(|p| Glob::new(p)).collect(),
            actions,
            keys,
        })
    }

    fn grants(&self, principal: &str, action: Action) -> bool {
        self.actions.contains(&action) && self.principals.iter().any(|g| g.matches(principal))
    }
}

/// The whole policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    pub(crate) fn new(rules: Vec<Rule>) -> Self {
        Policy { rules }
    }

    /// Number of rules.
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// True if some rule lets `principal` do `action` (on some key, for key actions).
    pub(crate) fn may(&self, principal: &str, action: Action) -> bool {
        self.rules.iter().any(|r| r.grants(principal, action))
    }

    /// True if some rule lets `principal` do `action` on this key.
    pub(crate) fn may_on(&self, principal: &str, action: Action, key: &KeyFacts<'_>) -> bool {
        self.rules
            .iter()
            .any(|r| r.grants(principal, action) && r.keys.iter().any(|k| k.matches(key)))
    }

    /// True if `principal` may do some action on this key: such keys are the ones
    /// ListKeys and ListAliases show it.
    pub(crate) fn may_see(&self, principal: &str, key: &KeyFacts<'_>) -> bool {
        self.rules.iter().any(|r| {
            r.actions.iter().any(|a| a.key_bound())
                && r.principals.iter().any(|g| g.matches(principal))
                && r.keys.iter().any(|k| k.matches(key))
        })
    }

    /// True if `principal` may do `action` on every key (so telling it a key does not
    /// exist reveals nothing it could not learn anyway).
    pub(crate) fn may_on_any_key(&self, principal: &str, action: Action) -> bool {
        self.rules
            .iter()
            .any(|r| r.grants(principal, action) && r.keys.contains(&KeyPattern::Any))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(p: &[&str], a: &[&str], k: Option<&[&str]>) -> RawRule {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        RawRule {
            principals: v(p),
            actions: v(a),
            keys: k.map(v),
        }
    }

    fn policy() -> Policy {
        let rules = [
            rule(
                &["spiffe://corp/payments/*"],
                &["use"],
                Some(&["alias/payments-*", "tag:team=payments"]),
            ),
            rule(&["spiffe://corp/admin"], &["manage"], Some(&["*"])),
            rule(&["spiffe://corp/security"], &["audit"], None),
        ];
        Policy::new(rules.iter().map(|r| Rule::parse(r).unwrap()).collect())
    }

    #[test]
    fn grants_by_principal_action_and_key() {
        let p = policy();
        let tags: BTreeMap<String, String> = [("team".into(), "payments".into())].into();
        let none = BTreeMap::new();
        let aliases = ["alias/payments-eu".to_string()];
        let tagged = KeyFacts {
            id: Some(Uuid::nil()),
            aliases: &[],
            tags: &tags,
        };
        let aliased = KeyFacts {
            id: Some(Uuid::nil()),
            aliases: &aliases,
            tags: &none,
        };
        let other = KeyFacts {
            id: Some(Uuid::nil()),
            aliases: &[],
            tags: &none,
        };
        let app = "spiffe://corp/payments/api";
        assert!(p.may(app, Action::Sign));
        assert!(p.may_on(app, Action::Sign, &tagged));
        assert!(p.may_on(app, Action::Decrypt, &aliased));
        assert!(!p.may_on(app, Action::Sign, &other));
        assert!(!p.may(app, Action::CreateKey));
        assert!(!p.may_on_any_key(app, Action::Sign));
        let admin = "spiffe://corp/admin";
        assert!(p.may_on(admin, Action::CreateKey, &other));
        assert!(p.may_on_any_key(admin, Action::DisableKey));
        assert!(!p.may(admin, Action::Sign));
        assert!(!p.may(admin, Action::QueryAudit));
        let sec = "spiffe://corp/security";
        assert!(p.may(sec, Action::QueryAudit) && p.may(sec, Action::GetAuditPublicKey));
        assert!(!p.may(sec, Action::DescribeKey));
        assert!(
            !p.may("spiffe://corp/payments", Action::Sign),
            "glob needs the slash"
        );
        assert!(
            !Policy::default().may(admin, Action::ListKeys),
            "deny by default"
        );
    }

    #[test]
    fn bad_rules_name_the_field() {
        let e = |r: RawRule| Rule::parse(&r).unwrap_err();
        assert_eq!(e(rule(&[], &["use"], Some(&["*"]))).0, "principals");
        let (f, msg) = e(rule(&["p"], &["frob"], Some(&["*"])));
        assert_eq!(f, "actions");
        assert!(msg.contains("frob"), "{msg}");
        assert_eq!(e(rule(&["p"], &["Sign"], None)).0, "keys");
        assert_eq!(e(rule(&["p"], &["Sign"], Some(&["nonsense"]))).0, "keys");
        assert_eq!(e(rule(&["p"], &["Sign"], Some(&["tag:=x"]))).0, "keys");
        assert!(Rule::parse(&rule(&["p"], &["QueryAudit"], None)).is_ok());
    }
}
