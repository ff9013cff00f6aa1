//! KeyService's signing calls: Sign, SignStream and Verify. A SignStream request goes
//! through the same bracket as a unary Sign and shares `sign_one`.

use hsmd_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{alg_from_pb, mt_from_pb};
use super::keys::{KeyApi, method};
use super::{ApiError, Begun, Call, Grant, Identity};
use crate::auth::Action;

/// Requests of one SignStream worked on at once.
const STREAM_WINDOW: usize = 32;

pub(super) type SignStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::SignStreamResponse, Status>> + Send>,
>;

impl KeyApi {
    /// One Sign request, unary or from a stream (authorized by the bracket).
    async fn sign_one(
        &self,
        call: &mut Call,
        grant: Grant,
        r: pb::SignRequest,
    ) -> Result<pb::SignResponse, ApiError> {
        let alg = alg_from_pb(r.algorithm)?;
        let mt = mt_from_pb(r.message_type)?;
        call.event.algorithm = alg.name().into();
        call.event.message_type = mt.name().into();
        let msg = r.message;
        let (id, signature) = self
            .state
            .with_key(call, &grant, &r.key_id, move |m, key| {
                Ok((key.id, m.sign(&key, alg, mt, &msg)?))
            })
            .await?;
        Ok(pb::SignResponse {
            key_id: id.to_string(),
            algorithm: r.algorithm,
            signature,
        })
    }

    pub(super) async fn sign_call(
        &self,
        req: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let call = self.state.call(req, method!("Sign"));
        let call = call.note_input(|r| &r.message);
        call.answer(Action::Sign, async |call, grant, r| {
            self.sign_one(call, grant, r).await
        })
        .await
    }

    /// Each request of the stream goes through the same bracket as a Sign call; only
    /// the answer differs (an item of the stream, carrying the request id).
    pub(super) async fn sign_stream_call(
        &self,
        req: Request<tonic::Streaming<pb::SignRequest>>,
    ) -> Result<Response<SignStream>, Status> {
        use futures_util::StreamExt;
        let who = Identity::of(&req);
        let api = self.clone();
        // Requests are worked on concurrently (up to STREAM_WINDOW) and answered in order.
        let answers = req
            .into_inner()
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()))
            .enumerate()
            .map(move |(index, r)| {
                let (api, who) = (api.clone(), who.clone());
                async move {
                    let call = Call::with_identity(&who, method!("SignStream"));
                    let call = Begun::new(&api.state, call, r).note_input(|r| &r.message);
                    let (request_id, result) = call
                        .recorded(Action::Sign, async |call, grant, r| {
                            api.sign_one(call, grant, r).await
                        })
                        .await;
                    let result = match result {
                        Ok(s) => pb::sign_stream_response::Result::Signature(s),
                        Err(e) => pb::sign_stream_response::Result::Error(pb::StreamError {
                            code: e.code() as i32,
                            reason: e.reason().into(),
                            message: e.to_status().message().to_string(),
                            request_id,
                        }),
                    };
                    Ok(pb::SignStreamResponse {
                        index: index as u64,
                        result: Some(result),
                    })
                }
            });
        let ordered = answers.buffered(STREAM_WINDOW);
        Ok(Response::new(Box::pin(ordered)))
    }

    pub(super) async fn verify_call(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let call = self.state.call(req, method!("Verify"));
        let call = call.note_input(|r| &r.message);
        call.answer(Action::Verify, async |call, grant, r| {
            let alg = alg_from_pb(r.algorithm)?;
            let mt = mt_from_pb(r.message_type)?;
            call.event.algorithm = alg.name().into();
            call.event.message_type = mt.name().into();
            let (msg, sig) = (r.message, r.signature);
            let (id, valid) = self
                .state
                .with_key(call, &grant, &r.key_id, move |m, key| {
                    Ok((key.id, m.verify(&key, alg, mt, &msg, &sig)?))
                })
                .await?;
            Ok(pb::VerifyResponse {
                key_id: id.to_string(),
                valid,
            })
        })
        .await
    }
}
