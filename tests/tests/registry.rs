//! The image-signing tests' registry, checked on its own before hsmd signs anything:
//! Debian's docker-registry sends a push notification with the configured bearer
//! secret for an image skopeo pushes, naming the repository, the tag and the digest of
//! the manifest the test built; and hsmd's reader of those envelopes (the webhook's
//! parser, run here through its fuzz target) takes the real bodies.

use hsmd_e2e::registry::{self, Notify, Receiver, Registry};

#[test]
fn a_push_is_notified_with_the_secret_repository_tag_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let notify = Notify {
        url: receiver.url(),
        secret: "s3cret-for-the-test".into(),
    };
    let reg = Registry::start(&dir.path().join("registry"), Some(&notify));
    let image = registry::oci_image(&dir.path().join("image"), b"hello from hsmd\n", "v1");
    registry::push(&reg, &image, "team/app-web:v1");

    let is_manifest_push = |body: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        v["events"].as_array().is_some_and(|evs| {
            evs.iter().any(|e| {
                e["action"] == "push"
                    && e["target"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
            })
        })
    };
    let got = receiver.wait_for("manifest push notification", |all| {
        all.iter().any(|r| is_manifest_push(&r.body))
    });
    for r in &got {
        assert_eq!(r.path, "/registry/events");
        assert_eq!(
            r.header("authorization"),
            Some("Bearer s3cret-for-the-test")
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.docker.distribution.events.v1+json")
        );
    }
    let push = got.iter().find(|r| is_manifest_push(&r.body)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&push.body).unwrap();
    let ev = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json")
        .unwrap();
    assert_eq!(ev["target"]["repository"], "team/app-web");
    assert_eq!(ev["target"]["tag"], "v1");
    assert_eq!(ev["target"]["digest"], image.digest.as_str());

    let events = hsmd::fuzz::TARGETS
        .iter()
        .find(|t| t.name == "registry_events")
        .expect("registry_events target");
    for r in &got {
        (events.run)(&r.body);
    }
}
