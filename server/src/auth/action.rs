//! What a caller can be allowed to do: one [`Action`] per operation, the groups a
//! policy can grant at once, and the rate-limit class of each.

/// Declares [`Action`] from one list: the enum, [`Action::ALL`] and [`Action::name`]
/// (the gRPC method's last segment, the identifier itself). A new operation is one line.
macro_rules! actions {
    ($($action:ident),+ $(,)?) => {
        /// One operation, as named in policy rules and refusals.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub(crate) enum Action {
            $($action),+
        }

        impl Action {
            /// Every operation, in declaration order.
            pub(crate) const ALL: &'static [Action] = &[$(Action::$action),+];

            /// The operation's name (the gRPC method's last segment).
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Action::$action => stringify!($action)),+
                }
            }
        }
    };
}

actions! {
    CreateKey,
    DescribeKey,
    ListKeys,
    GetPublicKey,
    EnableKey,
    DisableKey,
    ScheduleKeyDeletion,
    CancelKeyDeletion,
    RotateKey,
    EnableKeyRotation,
    DisableKeyRotation,
    CreateAlias,
    UpdateAlias,
    DeleteAlias,
    ListAliases,
    Sign,
    Verify,
    Encrypt,
    Decrypt,
    GenerateDataKey,
    GenerateDataKeyWithoutPlaintext,
    GenerateRandom,
    GetParametersForImport,
    ImportKeyMaterial,
    DeleteImportedKeyMaterial,
    GenerateCsr,
    SelfSignedCertificate,
    ImportCertificate,
    GetCertificate,
    GetTokenInfo,
    QueryAudit,
    VerifyAuditLog,
    GetAuditPublicKey,
    CreateSignaturePolicy,
    DescribeSignaturePolicy,
    ListSignaturePolicies,
    UpdateSignaturePolicy,
    DeleteSignaturePolicy,
    SignImage,
    SignNamespace,
    VerifyImage,
}

/// Rate-limit class of an action (`[rate_limits]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum LimitClass {
    Sign,
    Verify,
    Crypt,
    Random,
    Manage,
    Audit,
}

impl LimitClass {
    /// Name as written in `[rate_limits]`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            LimitClass::Sign => "sign",
            LimitClass::Verify => "verify",
            LimitClass::Crypt => "crypt",
            LimitClass::Random => "random",
            LimitClass::Manage => "manage",
            LimitClass::Audit => "audit",
        }
    }
}

use Action::*;

impl Action {
    /// The actions a name stands for: a group (`use`, `manage`, `audit`, `*`), an
    /// image-signing family (`policy:*`, `policy:create|describe|list|update|delete`,
    /// `image:sign` (SignImage and SignNamespace), `image:verify`) or one operation
    /// (case-insensitive).
    pub(crate) fn parse(name: &str) -> Option<Vec<Action>> {
        let group = |g: Group| {
            Action::ALL
                .iter()
                .copied()
                .filter(|a| a.group() == g)
                .collect()
        };
        match name.to_ascii_lowercase().as_str() {
            "*" | "all" => Some(Action::ALL.to_vec()),
            "use" => Some(group(Group::Use)),
            "manage" => Some(group(Group::Manage)),
            "audit" => Some(group(Group::Audit)),
            "policy:*" => Some(vec![
                CreateSignaturePolicy,
                DescribeSignaturePolicy,
                ListSignaturePolicies,
                UpdateSignaturePolicy,
                DeleteSignaturePolicy,
            ]),
            "policy:create" => Some(vec![CreateSignaturePolicy]),
            "policy:describe" => Some(vec![DescribeSignaturePolicy]),
            "policy:list" => Some(vec![ListSignaturePolicies]),
            "policy:update" => Some(vec![UpdateSignaturePolicy]),
            "policy:delete" => Some(vec![DeleteSignaturePolicy]),
            "image:sign" => Some(vec![SignImage, SignNamespace]),
            "image:verify" => Some(vec![VerifyImage]),
            lower => Action::ALL
                .iter()
                .copied()
                .find(|a| a.name().to_ascii_lowercase() == lower)
                .map(|a| vec![a]),
        }
    }

    /// The group that grants this action.
    pub(crate) fn group(self) -> Group {
        match self {
            Sign
            | Verify
            | Encrypt
            | Decrypt
            | GenerateDataKey
            | GenerateDataKeyWithoutPlaintext
            | GetPublicKey
            | GenerateRandom => Group::Use,
            SignImage | SignNamespace | VerifyImage => Group::Images,
            QueryAudit | VerifyAuditLog | GetAuditPublicKey => Group::Audit,
            _ => Group::Manage,
        }
    }

    /// True if the action is about one key, so rules' `keys` decide; false for calls
    /// about no key (lists are filtered to the keys the caller may see instead).
    pub(crate) fn key_bound(self) -> bool {
        !matches!(
            self,
            ListKeys
                | ListAliases
                | GenerateRandom
                | GetTokenInfo
                | QueryAudit
                | VerifyAuditLog
                | GetAuditPublicKey
                | CreateSignaturePolicy
                | DescribeSignaturePolicy
                | ListSignaturePolicies
                | UpdateSignaturePolicy
                | DeleteSignaturePolicy
                | SignImage
                | SignNamespace
                | VerifyImage
        )
    }

    /// The rate-limit class.
    pub(crate) fn limit_class(self) -> LimitClass {
        match self {
            Sign | SignImage | SignNamespace => LimitClass::Sign,
            Verify | GetPublicKey | VerifyImage => LimitClass::Verify,
            Encrypt | Decrypt | GenerateDataKey | GenerateDataKeyWithoutPlaintext => {
                LimitClass::Crypt
            }
            GenerateRandom => LimitClass::Random,
            QueryAudit | VerifyAuditLog | GetAuditPublicKey => LimitClass::Audit,
            _ => LimitClass::Manage,
        }
    }
}

/// Action groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// Cryptography with keys (and random bytes).
    Use,
    /// Key administration: create, lifecycle, aliases, import, certificates, token info.
    Manage,
    /// Reading and checking the audit log.
    Audit,
    /// Signing and verifying container images: granted by name (`image:sign`,
    /// `image:verify`) or `*` only, so no existing grant widens to them.
    Images,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_groups() {
        for &a in Action::ALL {
            assert_eq!(Action::parse(a.name()), Some(vec![a]));
        }
        assert_eq!(Action::parse("sign"), Some(vec![Sign]));
        let use_ = Action::parse("use").unwrap();
        assert!(use_.contains(&Sign) && use_.contains(&Decrypt) && use_.contains(&GetPublicKey));
        assert!(!use_.contains(&CreateKey));
        let manage = Action::parse("manage").unwrap();
        assert!(manage.contains(&CreateKey) && manage.contains(&GenerateCsr));
        assert!(!manage.contains(&Sign) && !manage.contains(&QueryAudit));
        assert_eq!(
            Action::parse("audit").unwrap(),
            [QueryAudit, VerifyAuditLog, GetAuditPublicKey]
        );
        assert_eq!(Action::parse("*").unwrap().len(), Action::ALL.len());
        assert_eq!(Action::parse("Frobnicate"), None);
        assert_eq!(Action::parse("policy:*").unwrap().len(), 5);
        assert_eq!(
            Action::parse("image:sign").unwrap(),
            [SignImage, SignNamespace]
        );
        assert_eq!(Action::parse("IMAGE:VERIFY").unwrap(), [VerifyImage]);
        assert!(!SignImage.key_bound() && !CreateSignaturePolicy.key_bound());
        assert!(manage.contains(&DeleteSignaturePolicy) && !use_.contains(&VerifyImage));
        assert!(!manage.contains(&SignImage) && Action::parse("*").unwrap().contains(&SignImage));
    }
}
