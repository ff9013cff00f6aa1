//! Rotation of AES-256 keys: each rotation makes a new version, a new secret key object
//! in the token; encryption uses the newest, decryption any version the blob names.
//! Asymmetric keys and keys with imported material do not rotate (as in AWS KMS): a
//! new key pair is a new key, and imported material is the caller's to replace.

use uuid::Uuid;

use super::{KeyError, KeyManager};
use crate::domain::record::{KeyRecord, KeyVersion, Rotation};
use crate::domain::spec::{KeyOrigin, KeySpec, KeyUsage};

/// Why `spec`/`usage`/`origin` cannot rotate, if they cannot.
pub(crate) fn rotation_refused(
    spec: KeySpec,
    usage: KeyUsage,
    origin: KeyOrigin,
) -> Option<String> {
    if spec != KeySpec::Aes256 || usage != KeyUsage::EncryptDecrypt {
        return Some(format!(
            "{spec} {usage} keys do not rotate: only AES_256 ENCRYPT_DECRYPT keys have versions (create a new key and move its alias instead)"
        ));
    }
    if origin == KeyOrigin::External {
        return Some(
            "keys with imported material do not rotate: import the new material into a new key and move its alias"
                .into(),
        );
    }
    None
}

impl KeyManager {
    /// Makes the key's next version in the token and records it; returns the key as it
    /// is now. The key must be ENABLED. Moves the next automatic rotation one period on.
    pub(crate) fn rotate(&self, key: &KeyRecord) -> Result<KeyRecord, KeyError> {
        if let Some(why) = rotation_refused(key.spec, key.usage, key.origin) {
            return Err(KeyError::RotationNotSupported(why));
        }
        key.require_enabled(self.now())?;
        let now = self.now();
        let next = KeyVersion {
            version: key.current_version().version + 1,
            object_id: Uuid::new_v4(),
            create_time: now,
        };
        let label = format!("{} v{}", key.id, next.version);
        self.creating(next.object_id, || {
            self.backend
                .generate_labelled(next.object_id, &label, key.spec, key.usage)?;
            let next_rotation = key
                .rotation
                .map(|r| now + i64::from(r.period_days) * 86_400);
            if let Err(e) = self.store.add_version(key.id, &next, next_rotation) {
                if let Err(d) = self.backend.destroy(next.object_id) {
                    tracing::error!(key_id = %key.id, object_id = %next.object_id, error = %d, "rollback of a half-made key version failed; start-up reconciliation will report it");
                }
                return Err(match e {
                    crate::store::StoreError::Conflict => KeyError::InvalidKeyState(format!(
                        "key {} was rotated, disabled or scheduled for deletion by another call meanwhile; describe it and retry if needed",
                        key.id
                    )),
                    other => other.into(),
                });
            }
            Ok(())
        })?;
        self.reload(key.id)
    }

    /// Turns automatic rotation on every `period_days` (7..365) from now, or off with
    /// `None`; returns the key as it is now.
    pub(crate) fn set_rotation(
        &self,
        key: &KeyRecord,
        period_days: Option<u32>,
    ) -> Result<KeyRecord, KeyError> {
        let rotation = match period_days {
            Some(d) => Some(check_rotation(
                key.spec,
                key.usage,
                key.origin,
                d,
                self.now(),
            )?),
            None => None,
        };
        if rotation.is_some() {
            key.require_enabled(self.now())?;
        }
        self.store.set_rotation(key.id, rotation)?;
        self.reload(key.id)
    }

    /// ENABLED keys whose automatic rotation is due (by this manager's clock).
    pub(crate) fn due_for_rotation(&self) -> Result<Vec<KeyRecord>, KeyError> {
        self.records_of(self.store.due_for_rotation(self.now())?)
    }

    /// Destroys every version's object of a key (the key id's objects, certificate
    /// included, and each later version's secret key object).
    pub(crate) fn destroy_objects(&self, key: &KeyRecord) -> Result<(), KeyError> {
        for v in key.versions.iter().filter(|v| v.object_id != key.id) {
            self.backend.destroy(v.object_id)?;
        }
        self.backend.destroy(key.id)?;
        Ok(())
    }
}

/// Checks a rotation period for a key of `spec`/`usage`/`origin`.
pub(crate) fn check_rotation(
    spec: KeySpec,
    usage: KeyUsage,
    origin: KeyOrigin,
    period_days: u32,
    now: i64,
) -> Result<Rotation, KeyError> {
    if let Some(why) = rotation_refused(spec, usage, origin) {
        return Err(KeyError::RotationNotSupported(why));
    }
    Rotation::every(period_days, now).ok_or(KeyError::InvalidRotationPeriod(period_days))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_generated_aes_keys_rotate() {
        use KeyOrigin::*;
        use KeySpec::*;
        use KeyUsage::*;
        assert_eq!(rotation_refused(Aes256, EncryptDecrypt, Hsm), None);
        assert!(rotation_refused(Aes256, EncryptDecrypt, External).is_some());
        assert!(rotation_refused(Rsa2048, EncryptDecrypt, Hsm).is_some());
        assert!(rotation_refused(EcP256, SignVerify, Hsm).is_some());
        assert!(matches!(
            check_rotation(Aes256, EncryptDecrypt, Hsm, 6, 0),
            Err(KeyError::InvalidRotationPeriod(6))
        ));
        assert!(matches!(
            check_rotation(EcP256, SignVerify, Hsm, 30, 0),
            Err(KeyError::RotationNotSupported(_))
        ));
        assert_eq!(
            check_rotation(Aes256, EncryptDecrypt, Hsm, 30, 5).unwrap(),
            Rotation {
                period_days: 30,
                next_time: 5 + 30 * 86_400
            }
        );
    }
}
