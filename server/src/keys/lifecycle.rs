//! Background lifecycle work: destroying keys whose deletion date has passed, and the
//! start-up reconciliation of token objects against the metadata store.

use std::collections::HashSet;

use uuid::Uuid;

use super::{KeyError, KeyManager};
use crate::domain::record::{KeyRecord, Transition};

/// What reconciliation found and fixed. The one fix it makes on its own: objects of a
/// CreateKey, RotateKey or ImportKeyMaterial that hsmd died in the middle of (a creation
/// note in the store, the objects not recorded as a live key's material) are destroyed;
/// that call was never answered.
/// Any other mismatch needs a person to look at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reconciliation {
    /// Keys in the store, in both places.
    pub(crate) matched: usize,
    /// Key objects in the token with no live key in the store (orphans).
    pub(crate) orphans: Vec<Uuid>,
    /// Live keys in the store whose material is not in the token.
    pub(crate) missing: Vec<Uuid>,
    /// Objects whose CKA_ID is not a key id of hsmd (other applications' objects).
    pub(crate) foreign_objects: usize,
    /// Half-made objects of interrupted creations, destroyed.
    pub(crate) destroyed: Vec<Uuid>,
}

impl KeyManager {
    /// Keys PENDING_DELETION whose date has passed (by this manager's clock).
    pub(crate) fn due_for_deletion(&self) -> Result<Vec<KeyRecord>, KeyError> {
        self.records_of(self.store.due_for_deletion(self.now())?)
    }

    /// The records of `ids` (keys gone meanwhile are left out).
    pub(super) fn records_of(&self, ids: Vec<Uuid>) -> Result<Vec<KeyRecord>, KeyError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(k) = self.store.get_key(id)? {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Destroys a key's objects in the token and marks it DESTROYED.
    pub(crate) fn destroy(&self, key: &KeyRecord) -> Result<KeyRecord, KeyError> {
        self.transition(key, Transition::Destroy, 0)
    }

    /// Compares the token's key objects with the store, destroying the half-made
    /// objects of creations a crash interrupted.
    pub(crate) fn reconcile(&self) -> Result<Reconciliation, KeyError> {
        let (in_token, foreign_objects) = self.backend.token_key_ids()?;
        let in_store: HashSet<Uuid> = self.store.keys_with_material()?.into_iter().collect();
        let mut token_set: HashSet<Uuid> = in_token.iter().copied().collect();
        let mut destroyed = Vec::new();
        for id in self.store.creations()? {
            // Objects the store does not count as a live key's material: a CreateKey or
            // RotateKey the store never recorded, or an import into a key still
            // PENDING_IMPORT. A note whose objects are recorded was simply not cleared.
            if token_set.contains(&id) && !in_store.contains(&id) {
                self.backend.destroy(id)?;
                token_set.remove(&id);
                destroyed.push(id);
            }
            self.store.end_creation(id)?;
        }
        let mut orphans: Vec<Uuid> = token_set.difference(&in_store).copied().collect();
        let mut missing: Vec<Uuid> = in_store.difference(&token_set).copied().collect();
        orphans.sort();
        missing.sort();
        Ok(Reconciliation {
            matched: in_store.intersection(&token_set).count(),
            orphans,
            missing,
            foreign_objects,
            destroyed,
        })
    }
}
