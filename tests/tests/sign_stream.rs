//! SignStream: many Sign requests on one stream, answered in order, each checked and
//! audited like a unary Sign; a bad request gets its own error and the stream goes on.

use hsmd_e2e::Daemon;
use hsmd_e2e::v1::{
    CreateKeyRequest, KeySpec, KeyUsage, MessageType, SignRequest, SigningAlgorithm, VerifyRequest,
    sign_stream_response::Result as Answer,
};

#[tokio::test]
async fn stream_answers_in_order_with_per_request_errors_and_audit() {
    let daemon = Daemon::start().await;
    let mut keys = daemon.keys();
    let key = keys
        .create_key(CreateKeyRequest {
            spec: KeySpec::EcP256 as i32,
            usage: KeyUsage::SignVerify as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap()
        .key_id;
    let req = |alg: SigningAlgorithm, msg: &[u8]| SignRequest {
        key_id: key.clone(),
        algorithm: alg as i32,
        message_type: MessageType::Raw as i32,
        message: msg.to_vec(),
    };
    let requests = vec![
        req(SigningAlgorithm::EcdsaSha256, b"first"),
        req(SigningAlgorithm::RsaPkcs1Sha256, b"wrong algorithm"),
        req(SigningAlgorithm::EcdsaSha256, &[0u8; 5000]),
        req(SigningAlgorithm::EcdsaSha256, b"last"),
    ];
    let before = daemon.audit_lines().len();
    let mut answers = keys
        .sign_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(a) = answers.message().await.unwrap() {
        got.push(a);
    }
    assert_eq!(
        got.iter().map(|a| a.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let reasons: Vec<String> = got
        .iter()
        .map(|a| match a.result.as_ref().unwrap() {
            Answer::Signature(_) => "ok".to_string(),
            Answer::Error(e) => e.reason.clone(),
        })
        .collect();
    assert_eq!(
        reasons,
        ["ok", "ALGORITHM_NOT_ALLOWED", "MESSAGE_TOO_LARGE", "ok"]
    );
    for (a, msg) in [(&got[0], &b"first"[..]), (&got[3], &b"last"[..])] {
        let Some(Answer::Signature(s)) = &a.result else {
            unreachable!()
        };
        let valid = keys
            .verify(VerifyRequest {
                key_id: key.clone(),
                algorithm: SigningAlgorithm::EcdsaSha256 as i32,
                message_type: MessageType::Raw as i32,
                message: msg.to_vec(),
                signature: s.signature.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .valid;
        assert!(valid);
    }
    // One record per request (plus the two Verify calls), errors with their reasons.
    let lines = daemon.audit_lines();
    let stream: Vec<_> = lines[before..]
        .iter()
        .filter(|l| l.str("method") == "/hsmd.v1.KeyService/SignStream")
        .collect();
    assert_eq!(stream.len(), 4);
    let mut audited: Vec<&str> = stream.iter().map(|l| l.str("reason")).collect();
    audited.sort();
    assert_eq!(
        audited,
        ["", "", "ALGORITHM_NOT_ALLOWED", "MESSAGE_TOO_LARGE"]
    );
    let Some(Answer::Error(e)) = &got[1].result else {
        unreachable!()
    };
    assert_eq!(daemon.audit_record(&e.request_id).str("outcome"), "invalid");
}
