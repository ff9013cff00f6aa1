//! Certificate chains imported for keys: one row per key, replaced by a later import.
//! The chain is kept as its certificates' DER, leaf first, back to back; the subject,
//! issuer, serial and validity of the leaf are columns too, for listing and expiry
//! queries without decoding.

use uuid::Uuid;

use super::sql::args;
use super::{Store, StoreError};

/// Created with the rest of the schema at `Store::open`.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS certificates (
    key_id TEXT PRIMARY KEY REFERENCES keys (key_id),
    chain BLOB NOT NULL,
    chain_length INTEGER NOT NULL,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    serial TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    import_time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_by_expiry ON certificates (not_after);
";

/// A key's certificate chain as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredChain {
    pub(crate) key_id: Uuid,
    /// The certificates' DER, leaf first, concatenated.
    pub(crate) chain: Vec<u8>,
    pub(crate) chain_length: u32,
    pub(crate) subject: String,
    pub(crate) issuer: String,
    /// Hex, upper case.
    pub(crate) serial: String,
    /// Unix seconds.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) import_time: i64,
}

impl Store {
    /// Stores a key's chain, replacing the one imported before.
    pub(crate) fn put_certificate(&self, c: &StoredChain) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "INSERT INTO certificates (key_id, chain, chain_length, subject, issuer, serial, not_before, not_after, import_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (key_id) DO UPDATE SET chain = excluded.chain, chain_length = excluded.chain_length,
                   subject = excluded.subject, issuer = excluded.issuer, serial = excluded.serial,
                   not_before = excluded.not_before, not_after = excluded.not_after, import_time = excluded.import_time",
                args![
                    c.key_id,
                    &c.chain,
                    c.chain_length,
                    &c.subject,
                    &c.issuer,
                    &c.serial,
                    c.not_before,
                    c.not_after,
                    c.import_time
                ],
            )?;
            Ok(())
        })
    }

    /// A key's chain, if one was imported.
    pub(crate) fn get_certificate(&self, key: Uuid) -> Result<Option<StoredChain>, StoreError> {
        self.with(|db| {
            db.query_opt(
                "SELECT chain, chain_length, subject, issuer, serial, not_before, not_after, import_time
                 FROM certificates WHERE key_id = ?1",
                args![key],
            )?
            .map(|r| {
                Ok(StoredChain {
                    key_id: key,
                    chain: r.get(0)?,
                    chain_length: r.get(1)?,
                    subject: r.get(2)?,
                    issuer: r.get(3)?,
                    serial: r.get(4)?,
                    not_before: r.get(5)?,
                    not_after: r.get(6)?,
                    import_time: r.get(7)?,
                })
            })
            .transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::record::KeyRecord;
    use crate::domain::spec::{KeyOrigin, KeySpec, KeyState, KeyUsage};

    #[test]
    fn put_replaces_and_get_reads_back() {
        for db in crate::store::tests::databases() {
            put_replaces_and_get_reads_back_on(&db.open("a"));
        }
    }

    fn put_replaces_and_get_reads_back_on(store: &Store) {
        let key = KeyRecord {
            id: Uuid::new_v4(),
            spec: KeySpec::EcP256,
            usage: KeyUsage::SignVerify,
            origin: KeyOrigin::Hsm,
            state: KeyState::Enabled,
            description: String::new(),
            tags: BTreeMap::new(),
            created_by: "p".into(),
            create_time: 1,
            deletion_time: None,
            destroy_time: None,
            public_key_der: Some(vec![1]),
            import_time: None,
            valid_to: None,
            key_check_value: None,
            aliases: vec![],
            versions: vec![],
            rotation: None,
        };
        store.insert_key(&key, None, None).unwrap();
        assert_eq!(store.get_certificate(key.id).unwrap(), None);
        let mut c = StoredChain {
            key_id: key.id,
            chain: vec![1, 2, 3],
            chain_length: 1,
            subject: "CN=a".into(),
            issuer: "CN=ca".into(),
            serial: "01".into(),
            not_before: 10,
            not_after: 20,
            import_time: 30,
        };
        store.put_certificate(&c).unwrap();
        assert_eq!(store.get_certificate(key.id).unwrap(), Some(c.clone()));
        c.chain = vec![4, 5];
        c.serial = "02".into();
        store.put_certificate(&c).unwrap();
        assert_eq!(store.get_certificate(key.id).unwrap(), Some(c));
        let other = StoredChain {
            key_id: Uuid::new_v4(),
            ..store.get_certificate(key.id).unwrap().unwrap()
        };
        assert!(
            store.put_certificate(&other).is_err(),
            "a chain needs its key row"
        );
    }
}
