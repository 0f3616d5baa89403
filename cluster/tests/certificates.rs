//! The device certificate registry on three members over loopback gRPC, through the seam's
//! `ClusterHandle`: the first registration in log order creates the record and a second
//! node's finds it; every member reads it; a status set on any member reaches every
//! member's broker (`certificate_disabled`, once each) so each ends its connections that
//! use the certificate.
//!
//! The brokers here are recording doubles of the seam's `BrokerHandle` (the real broker is
//! driven through the same calls by `skein-tests`' `certificates` tests).

#[path = "support/cluster.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{init_tracing, test_settings, wait_for, TestCluster};
use skein_seam::{
    BoxFuture, BrokerHandle, BrokerHandleError, CertificateStatus, ClientId, ClusterError,
    ClusterHandle, ForwardedPublish, KickReason, NodeId as SeamNodeId, SeenCertificate,
};

const WITHIN: Duration = Duration::from_secs(15);

/// The certificates a member's broker was told to disable, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, CertificateStatus)>>);

impl Recorder {
    fn disabled(&self) -> Vec<(String, CertificateStatus)> {
        self.0.lock().unwrap().clone()
    }
}

impl BrokerHandle for Recorder {
    fn deliver_forwarded(
        &self,
        _publish: ForwardedPublish,
    ) -> BoxFuture<'_, Result<usize, BrokerHandleError>> {
        Box::pin(async { Err(BrokerHandleError::NotSupported("a recorder")) })
    }

    fn kick(&self, _client_id: &ClientId, _reason: KickReason) -> bool {
        false
    }

    fn taken_over(&self, _client_id: &ClientId, _epoch: u64, _by: SeamNodeId) {}

    fn interest_changed(&self, _filter: &str, _node: SeamNodeId, _subscribers: u32) {}

    fn interest_reset(&self, _interest: Vec<(String, SeamNodeId, u32)>) {}

    fn retained_messages(&self) -> Vec<ForwardedPublish> {
        Vec::new()
    }

    fn restore_retained(
        &self,
        _messages: Vec<ForwardedPublish>,
    ) -> BoxFuture<'_, Result<usize, BrokerHandleError>> {
        Box::pin(async { Ok(0) })
    }

    fn certificate_disabled(&self, sn: &str, status: CertificateStatus) {
        self.0.lock().unwrap().push((sn.to_owned(), status));
    }
}

fn seen(sn: &str) -> SeenCertificate {
    SeenCertificate {
        sn: sn.to_owned(),
        ca_sn: "7439".to_owned(),
        common_name: "VIN-1234-5678".to_owned(),
        chain_sn: format!("{sn},7439"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_registered_once_and_disabled_on_every_member() {
    init_tracing();
    let cluster = TestCluster::start(&[1, 2, 3], test_settings()).await;
    cluster.leader(WITHIN).await;
    let recorders: Vec<Arc<Recorder>> = [1, 2, 3]
        .into_iter()
        .map(|id| {
            let recorder = Arc::new(Recorder::default());
            assert!(cluster.node(id).attach_broker(recorder.clone()));
            recorder
        })
        .collect();
    let handle = |id| -> &dyn ClusterHandle { cluster.node(id).as_ref() };

    // Node 1 registers it; node 2, seeing the same certificate, finds it registered.
    let first = handle(1)
        .register_certificate(seen("1bf2"), CertificateStatus::Active)
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.record.registered_by, SeamNodeId(1));
    assert_eq!(first.record.status, CertificateStatus::Active);
    let second = handle(2)
        .register_certificate(seen("1bf2"), CertificateStatus::PendingActivation)
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.record, first.record);

    // Every member reads it from its applied registry.
    for id in [1, 2, 3] {
        let record = wait_for(WITHIN, "the certificate is applied", || async {
            handle(id).certificate("1bf2")
        })
        .await;
        assert_eq!(record, first.record);
        assert_eq!(
            handle(id).certificates(),
            std::slice::from_ref(&first.record)
        );
    }
    // Registered active: no broker is told anything.
    assert!(recorders.iter().all(|r| r.disabled().is_empty()));

    // Revoked through node 3: every member's broker is told, once.
    let revoked = handle(3)
        .set_certificate_status("1bf2", CertificateStatus::Revoked)
        .await
        .unwrap();
    assert_eq!(revoked.status, CertificateStatus::Revoked);
    assert!(revoked.updated_at_ms >= revoked.registered_at_ms);
    for recorder in &recorders {
        let told = wait_for(WITHIN, "the broker is told", || async {
            let told = recorder.disabled();
            (!told.is_empty()).then_some(told)
        })
        .await;
        assert_eq!(told, [("1bf2".to_owned(), CertificateStatus::Revoked)]);
    }
    // The same status again changes nothing and tells nobody.
    handle(1)
        .set_certificate_status("1bf2", CertificateStatus::Revoked)
        .await
        .unwrap();
    // An unknown serial number, and a malformed one.
    assert!(matches!(
        handle(2)
            .set_certificate_status("abcd", CertificateStatus::Active)
            .await,
        Err(ClusterError::NotFound(_))
    ));
    assert!(matches!(
        handle(2)
            .register_certificate(seen("NOT HEX"), CertificateStatus::Active)
            .await,
        Err(ClusterError::Invalid(_))
    ));
    // Activated again: active is not a reason to end connections.
    handle(2)
        .set_certificate_status("1bf2", CertificateStatus::Active)
        .await
        .unwrap();
    let settled = handle(1)
        .set_certificate_status("1bf2", CertificateStatus::Inactive)
        .await
        .unwrap();
    assert_eq!(settled.status, CertificateStatus::Inactive);
    for recorder in &recorders {
        let told = wait_for(WITHIN, "the broker is told again", || async {
            let told = recorder.disabled();
            (told.len() >= 2).then_some(told)
        })
        .await;
        assert_eq!(
            told,
            [
                ("1bf2".to_owned(), CertificateStatus::Revoked),
                ("1bf2".to_owned(), CertificateStatus::Inactive)
            ]
        );
    }
}
