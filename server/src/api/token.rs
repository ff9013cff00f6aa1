//! TokenService: the token, its probed capabilities, and what hsmd offers on it.

use hsmd_proto::v1 as pb;
use hsmd_proto::v1::token_service_server::TokenService;
use tonic::{Request, Response, Status};

use super::ApiState;
use super::convert::{alg_to_pb, enc_alg_to_pb, spec_to_pb};
use crate::auth::Action;

/// The TokenService implementation.
pub(crate) struct TokenApi {
    state: ApiState,
}

impl TokenApi {
    pub(crate) fn new(state: ApiState) -> Self {
        TokenApi { state }
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn get_token_info(
        &self,
        req: Request<pb::GetTokenInfoRequest>,
    ) -> Result<Response<pb::GetTokenInfoResponse>, Status> {
        let call = self.state.call(req, "/hsmd.v1.TokenService/GetTokenInfo");
        call.answer(Action::GetTokenInfo, async |_, _, _| Ok(self.info()))
            .await
    }
}

impl TokenApi {
    /// The token, what it can do, and what hsmd offers on it.
    fn info(&self) -> pb::GetTokenInfoResponse {
        let backend = self.state.keys.backend();
        let d = backend.description();
        let caps = backend.capabilities();
        pb::GetTokenInfoResponse {
            label: d.label.clone(),
            manufacturer: d.manufacturer.clone(),
            model: d.model.clone(),
            serial_number: d.serial_number.clone(),
            module_path: d.module_path.clone(),
            library_description: d.library_description.clone(),
            library_version: d.library_version.clone(),
            capabilities: caps
                .mechanisms
                .iter()
                .map(|c| pb::Capability {
                    mechanism: c.mechanism.to_string(),
                    supported: c.supported,
                    note: c.note.clone(),
                })
                .collect(),
            key_specs: caps.key_specs.iter().map(|s| spec_to_pb(*s)).collect(),
            signing_algorithms: caps
                .signing_algorithms
                .iter()
                .map(|a| alg_to_pb(*a))
                .collect(),
            session_pool_size: backend.pool_size() as u32,
            encryption_algorithms: caps
                .encryption_algorithms
                .iter()
                .map(|a| enc_alg_to_pb(*a))
                .collect(),
            algorithm_paths: caps
                .algorithm_paths
                .iter()
                .map(|p| pb::AlgorithmPath {
                    algorithm: p.algorithm.name().to_string(),
                    offered: p.offered,
                    path: p.path.clone(),
                })
                .chain(
                    self.state
                        .keys
                        .import_paths()
                        .into_iter()
                        .map(|(alg, path)| {
                            let offered = path.is_ok();
                            pb::AlgorithmPath {
                                algorithm: alg.name().to_string(),
                                offered,
                                path: path.unwrap_or_else(|why| format!("import: {why}")),
                            }
                        }),
                )
                .collect(),
            refusals: caps
                .refusals
                .iter()
                .map(|r| pb::Refusal {
                    feature: r.feature.clone(),
                    mechanism: r.mechanism.to_string(),
                    reason: r.why.clone(),
                })
                .chain(self.import_refusals())
                .collect(),
            usage_enforced_by_token: !caps.usage_forced_by_token,
        }
    }

    /// Import wrapping algorithms refused for a missing mechanism.
    fn import_refusals(&self) -> Vec<pb::Refusal> {
        self.state
            .keys
            .import_refusals()
            .into_iter()
            .map(|(feature, mechanism, reason)| pb::Refusal {
                feature,
                mechanism: mechanism.to_string(),
                reason,
            })
            .collect()
    }
}
