//! The key record kept in the metadata store, and the lifecycle rules that move it
//! between states. Key material is never here: only the token holds it. Pure data: the
//! caller passes the time (from its [`Clock`](crate::clock::Clock)).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::spec::{KeyOrigin, KeySpec, KeyState, KeyUsage};

/// Shortest and longest deletion window, and the default (days).
pub const DELETION_WINDOW_DAYS: std::ops::RangeInclusive<u32> = 7..=30;
pub const DEFAULT_DELETION_DAYS: u32 = 30;

/// Shortest and longest automatic rotation period (days), as the cloud KMSs allow.
pub const ROTATION_PERIOD_DAYS: std::ops::RangeInclusive<u32> = 7..=365;

/// One version of a key's material: its own object in the token. Version 1 is the
/// object made with the key (CKA_ID = the key id); each rotation adds the next, whose
/// object has a fresh id. Older versions stay for decryption only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersion {
    pub version: u32,
    /// CKA_ID (16 bytes) of the version's object in the token.
    pub object_id: Uuid,
    /// Unix seconds.
    pub create_time: i64,
}

/// Automatic rotation of a key: every `period_days`, next at `next_time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub period_days: u32,
    /// Unix seconds.
    pub next_time: i64,
}

impl Rotation {
    /// A rotation every `period_days` from `now`, or `None` when the period is outside
    /// [`ROTATION_PERIOD_DAYS`].
    pub fn every(period_days: u32, now: i64) -> Option<Rotation> {
        ROTATION_PERIOD_DAYS
            .contains(&period_days)
            .then(|| Rotation {
                period_days,
                next_time: now + i64::from(period_days) * 86_400,
            })
    }
}

/// Metadata of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: Uuid,
    pub spec: KeySpec,
    pub usage: KeyUsage,
    pub origin: KeyOrigin,
    pub state: KeyState,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub created_by: String,
    /// Unix seconds.
    pub create_time: i64,
    pub deletion_time: Option<i64>,
    pub destroy_time: Option<i64>,
    /// SubjectPublicKeyInfo DER for key pairs, read from the token at creation.
    pub public_key_der: Option<Vec<u8>>,
    /// EXTERNAL keys holding material: when it was imported and when it expires.
    pub import_time: Option<i64>,
    pub valid_to: Option<i64>,
    /// EXTERNAL AES keys ever imported: key check value (upper-case hex, 3 bytes).
    pub key_check_value: Option<String>,
    pub aliases: Vec<String>,
    /// Every version, oldest first; never empty (see [`KeyVersion`]).
    pub versions: Vec<KeyVersion>,
    /// Automatic rotation, when enabled.
    pub rotation: Option<Rotation>,
}

impl KeyRecord {
    /// Version 1 of a new key: its own object, made at `create_time`.
    pub fn first_version(id: Uuid, create_time: i64) -> Vec<KeyVersion> {
        vec![KeyVersion {
            version: 1,
            object_id: id,
            create_time,
        }]
    }

    /// The version new encryptions use: the newest.
    pub fn current_version(&self) -> KeyVersion {
        self.versions
            .last()
            .copied()
            .unwrap_or_else(|| Self::first_version(self.id, self.create_time)[0])
    }

    /// Version `n`, if the key has it.
    pub fn version(&self, n: u32) -> Option<KeyVersion> {
        self.versions.iter().find(|v| v.version == n).copied()
    }

    /// Refuses a key made for another usage (WRONG_KEY_USAGE).
    pub fn require_usage(&self, usage: KeyUsage) -> Result<(), KeyRefused> {
        if self.usage == usage {
            return Ok(());
        }
        Err(KeyRefused::WrongUsage {
            key: self.id,
            usage: self.usage.name(),
            needed: usage.name(),
        })
    }

    /// Refuses a key that is not ENABLED (its state's reason: KEY_DISABLED...). Imported
    /// material past its valid-to counts as gone (KEY_PENDING_IMPORT) even before the
    /// sweep destroys it. `now` is unix seconds.
    pub fn require_enabled(&self, now: i64) -> Result<(), KeyRefused> {
        if self.valid_to.is_some_and(|t| t <= now) {
            return Err(KeyRefused::State {
                key: self.id,
                state: KeyState::PendingImport,
            });
        }
        if self.state == KeyState::Enabled {
            return Ok(());
        }
        Err(KeyRefused::State {
            key: self.id,
            state: self.state,
        })
    }
}

/// Why a key may not serve a call; `keys::KeyError` carries it to the caller with the
/// state's or usage's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefused {
    /// Made for another usage.
    WrongUsage {
        key: Uuid,
        usage: &'static str,
        needed: &'static str,
    },
    /// Not ENABLED (or its imported material expired: PENDING_IMPORT).
    State { key: Uuid, state: KeyState },
}

/// A lifecycle change a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Enable,
    Disable,
    ScheduleDeletion,
    CancelDeletion,
    Destroy,
}

/// Why a transition is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRefused {
    pub from: KeyState,
    pub transition: Transition,
}

impl Transition {
    /// The state after this transition from `from`, or why it is not allowed.
    /// Enabling an enabled key and disabling a disabled key are no-ops, as in the
    /// cloud KMS APIs; cancelling a deletion leaves the key DISABLED.
    pub fn apply(self, from: KeyState) -> Result<KeyState, TransitionRefused> {
        use KeyState::*;
        let to = match (self, from) {
            (Transition::Enable, Enabled | Disabled) => Enabled,
            (Transition::Disable, Enabled | Disabled) => Disabled,
            (Transition::ScheduleDeletion, Enabled | Disabled | PendingImport) => PendingDeletion,
            (Transition::CancelDeletion, PendingDeletion) => Disabled,
            (Transition::Destroy, PendingDeletion) => Destroyed,
            _ => {
                return Err(TransitionRefused {
                    from,
                    transition: self,
                });
            }
        };
        Ok(to)
    }
}

/// Checks a requested deletion window (0 = default).
pub fn deletion_window(days: u32) -> Option<u32> {
    match days {
        0 => Some(DEFAULT_DELETION_DAYS),
        d if DELETION_WINDOW_DAYS.contains(&d) => Some(d),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyState::*;

    #[test]
    fn lifecycle_transitions() {
        assert_eq!(Transition::Enable.apply(Disabled), Ok(Enabled));
        assert_eq!(Transition::Enable.apply(Enabled), Ok(Enabled));
        assert_eq!(Transition::Disable.apply(Enabled), Ok(Disabled));
        assert_eq!(
            Transition::ScheduleDeletion.apply(Enabled),
            Ok(PendingDeletion)
        );
        assert_eq!(
            Transition::CancelDeletion.apply(PendingDeletion),
            Ok(Disabled)
        );
        assert_eq!(Transition::Destroy.apply(PendingDeletion), Ok(Destroyed));
        assert!(Transition::Enable.apply(PendingDeletion).is_err());
        assert!(Transition::Disable.apply(Destroyed).is_err());
        assert!(Transition::CancelDeletion.apply(Enabled).is_err());
        assert!(Transition::ScheduleDeletion.apply(PendingDeletion).is_err());
        assert!(Transition::Destroy.apply(Enabled).is_err());
    }

    #[test]
    fn rotation_period_bounds() {
        assert_eq!(Rotation::every(6, 0), None);
        assert_eq!(Rotation::every(366, 0), None);
        assert_eq!(
            Rotation::every(7, 10).map(|r| r.next_time),
            Some(10 + 7 * 86_400)
        );
        assert!(Rotation::every(365, 0).is_some());
    }

    #[test]
    fn deletion_window_bounds() {
        assert_eq!(deletion_window(0), Some(30));
        assert_eq!(deletion_window(7), Some(7));
        assert_eq!(deletion_window(30), Some(30));
        assert_eq!(deletion_window(6), None);
        assert_eq!(deletion_window(31), None);
    }
}
