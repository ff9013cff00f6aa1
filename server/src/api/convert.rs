//! Conversions between proto messages and the key model. The proto enum value names
//! are the model's stable names, so enums convert by name.

use hsmd_proto::v1 as pb;

use crate::domain::record::KeyRecord;
use crate::domain::spec::{
    EncryptionAlgorithm, KeyOrigin, KeySpec, KeyState, KeyUsage, MessageType, SigningAlgorithm,
};
use crate::keys::KeyError;
use crate::store::Alias;

/// Seconds since the epoch as a protobuf Timestamp.
pub(crate) fn ts(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

macro_rules! enum_conv {
    ($from:ident, $to:ident, $pb:ty, $model:ty, $field:literal, $unspecified:expr) => {
        /// Decodes the proto enum; unspecified or unknown values are INVALID_ARGUMENT
        /// naming the field and the allowed values.
        pub(crate) fn $from(v: i32) -> Result<$model, KeyError> {
            let name = <$pb>::try_from(v).ok().map(|e| e.as_str_name());
            match name.and_then(<$model>::from_name) {
                Some(m) => Ok(m),
                None => match $unspecified {
                    Some(d) if name.is_some() => Ok(d),
                    _ => Err(KeyError::InvalidArgument(format!(
                        "{} is required; one of: {}",
                        $field,
                        <$model>::ALL
                            .iter()
                            .map(|x| x.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                },
            }
        }

        /// Encodes a model enum as the proto enum value. (Generated for every pair;
        /// not every enum is sent back: MessageType is not.)
        #[allow(dead_code)]
        pub(crate) fn $to(m: $model) -> i32 {
            <$pb>::from_str_name(m.name())
                .map(|e| e as i32)
                .unwrap_or(0)
        }
    };
}

enum_conv!(
    spec_from_pb,
    spec_to_pb,
    pb::KeySpec,
    KeySpec,
    "spec",
    None::<KeySpec>
);
enum_conv!(
    usage_from_pb,
    usage_to_pb,
    pb::KeyUsage,
    KeyUsage,
    "usage",
    None::<KeyUsage>
);
enum_conv!(
    origin_from_pb,
    origin_to_pb,
    pb::KeyOrigin,
    KeyOrigin,
    "origin",
    Some(KeyOrigin::Hsm)
);
enum_conv!(
    state_from_pb,
    state_to_pb,
    pb::KeyState,
    KeyState,
    "state",
    None::<KeyState>
);
enum_conv!(
    alg_from_pb,
    alg_to_pb,
    pb::SigningAlgorithm,
    SigningAlgorithm,
    "algorithm",
    None::<SigningAlgorithm>
);
enum_conv!(
    mt_from_pb,
    mt_to_pb,
    pb::MessageType,
    MessageType,
    "message_type",
    Some(MessageType::Raw)
);

enum_conv!(
    enc_alg_from_pb_required,
    enc_alg_to_pb,
    pb::EncryptionAlgorithm,
    EncryptionAlgorithm,
    "encryption_algorithm",
    None::<EncryptionAlgorithm>
);

/// Decodes an optional encryption algorithm: unspecified is `None` (the key's default),
/// an unknown value is INVALID_ARGUMENT.
pub(crate) fn enc_alg_from_pb(v: i32) -> Result<Option<EncryptionAlgorithm>, KeyError> {
    if v == 0 {
        Ok(None)
    } else {
        enc_alg_from_pb_required(v).map(Some)
    }
}

/// The encryption algorithms a key allows, as proto values (none for signing keys).
pub(crate) fn encryption_algorithms(k: &KeyRecord) -> Vec<i32> {
    if k.usage == KeyUsage::EncryptDecrypt {
        k.spec
            .encryption_algorithms()
            .iter()
            .map(|a| enc_alg_to_pb(*a))
            .collect()
    } else {
        Vec::new()
    }
}

/// Proto metadata of a key record.
pub(crate) fn metadata(k: &KeyRecord) -> pb::KeyMetadata {
    pb::KeyMetadata {
        key_id: k.id.to_string(),
        spec: spec_to_pb(k.spec),
        usage: usage_to_pb(k.usage),
        origin: origin_to_pb(k.origin),
        state: state_to_pb(k.state),
        description: k.description.clone(),
        tags: k.tags.clone().into_iter().collect(),
        aliases: k.aliases.clone(),
        create_time: Some(ts(k.create_time)),
        deletion_time: k
            .deletion_time
            .filter(|_| k.state == KeyState::PendingDeletion)
            .map(ts),
        destroy_time: k.destroy_time.map(ts),
        created_by: k.created_by.clone(),
        signing_algorithms: if k.usage == KeyUsage::SignVerify {
            k.spec
                .signing_algorithms()
                .iter()
                .map(|a| alg_to_pb(*a))
                .collect()
        } else {
            Vec::new()
        },
        encryption_algorithms: encryption_algorithms(k),
        import_time: k.import_time.map(ts),
        valid_to: k.valid_to.map(ts),
        key_check_value: k.key_check_value.clone().unwrap_or_default(),
        current_version: k.current_version().version,
        versions: k
            .versions
            .iter()
            .map(|v| pb::KeyVersion {
                version: v.version,
                create_time: Some(ts(v.create_time)),
            })
            .collect(),
        rotation_period_days: k.rotation.map_or(0, |r| r.period_days),
        next_rotation_time: k.rotation.map(|r| ts(r.next_time)),
    }
}

/// Proto alias.
pub(crate) fn alias(a: &Alias) -> pb::Alias {
    pb::Alias {
        alias_name: a.name.clone(),
        target_key_id: a.key_id.to_string(),
        create_time: Some(ts(a.create_time)),
        update_time: Some(ts(a.update_time)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_enum_has_a_proto_value() {
        for s in KeySpec::ALL {
            assert_eq!(spec_from_pb(spec_to_pb(*s)).unwrap(), *s);
        }
        for a in SigningAlgorithm::ALL {
            assert_eq!(alg_from_pb(alg_to_pb(*a)).unwrap(), *a);
        }
        for s in KeyState::ALL {
            assert_eq!(state_from_pb(state_to_pb(*s)).unwrap(), *s);
        }
        for a in EncryptionAlgorithm::ALL {
            assert_eq!(enc_alg_from_pb(enc_alg_to_pb(*a)).unwrap(), Some(*a));
        }
        assert_eq!(enc_alg_from_pb(0).unwrap(), None);
        assert!(enc_alg_from_pb(77).is_err());
    }

    #[test]
    fn unspecified_values() {
        assert!(spec_from_pb(0).is_err());
        assert!(alg_from_pb(99).is_err());
        assert_eq!(mt_from_pb(0).unwrap(), MessageType::Raw);
        assert_eq!(origin_from_pb(0).unwrap(), KeyOrigin::Hsm);
        assert!(mt_from_pb(42).is_err());
    }
}
