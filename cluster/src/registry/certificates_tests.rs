//! The certificate registry's rules: first registration wins, statuses set by operators,
//! bad commands rejected, deterministic apply and snapshot round trip.

use proptest::prelude::*;
use skein_proto::v1 as pb;
use skein_proto::v1::command::Command as C;
use skein_proto::v1::command_result::Result as R;

use super::*;

fn register_cert(sn: &str, node: u64, status: pb::CertificateStatus, at: u64) -> pb::Command {
    pb::Command {
        command: Some(C::RegisterCertificate(pb::RegisterCertificate {
            sn: sn.into(),
            ca_sn: "7439e17052ff2edbeda4f5db379a69fd8c5f48a5".into(),
            common_name: format!("VIN-{sn}"),
            chain_sn: format!("{sn},7439e17052ff2edbeda4f5db379a69fd8c5f48a5"),
            status: status as i32,
            node_id: node,
            stamped_at_ms: at,
        })),
    }
}

fn set_status(sn: &str, status: pb::CertificateStatus, at: u64) -> pb::Command {
    pb::Command {
        command: Some(C::SetCertificateStatus(pb::SetCertificateStatus {
            sn: sn.into(),
            status: status as i32,
            stamped_at_ms: at,
        })),
    }
}

fn apply(r: &mut Registry, c: &pb::Command) -> (R, Vec<Change>) {
    let mut changes = Vec::new();
    let result = r.apply(c, &mut changes).result.expect("a result");
    (result, changes)
}

#[test]
fn the_first_registration_in_log_order_creates_the_record_and_later_ones_see_it() {
    let mut r = Registry::default();
    let (first, changes) = apply(
        &mut r,
        &register_cert("1bf2", 1, pb::CertificateStatus::Active, 100),
    );
    let R::CertificateRegistered(first) = first else {
        panic!("{first:?}")
    };
    assert!(first.created);
    let record = first.record.expect("record");
    assert_eq!(record.registered_by, 1);
    assert_eq!(record.registered_at_ms, 100);
    assert_eq!(record.status, pb::CertificateStatus::Active as i32);
    assert_eq!(record.common_name, "VIN-1bf2");
    assert_eq!(
        changes,
        [Change::CertificateStatus {
            sn: "1bf2".into(),
            status: pb::CertificateStatus::Active
        }]
    );
    // Node 2 saw the same certificate at the same moment, with another status: the
    // record stays node 1's, and node 2 learns it did not register it.
    let (second, changes) = apply(
        &mut r,
        &register_cert("1bf2", 2, pb::CertificateStatus::PendingActivation, 101),
    );
    let R::CertificateRegistered(second) = second else {
        panic!("{second:?}")
    };
    assert!(!second.created);
    assert_eq!(second.record.as_ref(), Some(&record));
    assert!(changes.is_empty());
    assert_eq!(r.certificate("1bf2"), Some(&record));
}

#[test]
fn statuses_are_set_with_the_proposer_s_time_and_unknown_serials_change_nothing() {
    let mut r = Registry::default();
    apply(
        &mut r,
        &register_cert("ab", 1, pb::CertificateStatus::PendingActivation, 100),
    );
    let (set, changes) = apply(
        &mut r,
        &set_status("ab", pb::CertificateStatus::Revoked, 200),
    );
    let R::CertificateStatusSet(set) = set else {
        panic!("{set:?}")
    };
    assert!(set.changed);
    let record = set.record.expect("record");
    assert_eq!(record.status, pb::CertificateStatus::Revoked as i32);
    assert_eq!(record.registered_at_ms, 100);
    assert_eq!(record.updated_at_ms, 200);
    assert_eq!(
        changes,
        [Change::CertificateStatus {
            sn: "ab".into(),
            status: pb::CertificateStatus::Revoked
        }]
    );
    // The same status again: no change, the time stays.
    let (again, changes) = apply(
        &mut r,
        &set_status("ab", pb::CertificateStatus::Revoked, 300),
    );
    let R::CertificateStatusSet(again) = again else {
        panic!("{again:?}")
    };
    assert!(!again.changed);
    assert_eq!(again.record.expect("record").updated_at_ms, 200);
    assert!(changes.is_empty());
    let (unknown, changes) = apply(
        &mut r,
        &set_status("cd", pb::CertificateStatus::Active, 400),
    );
    assert_eq!(
        unknown,
        R::CertificateStatusSet(pb::CertificateStatusSet {
            record: None,
            changed: false
        })
    );
    assert!(changes.is_empty());
}

#[test]
fn malformed_certificate_commands_are_rejected_and_change_nothing() {
    let mut r = Registry::default();
    let bad = [
        register_cert("", 1, pb::CertificateStatus::Active, 1),
        register_cert("1BF2", 1, pb::CertificateStatus::Active, 1),
        register_cert("not-hex", 1, pb::CertificateStatus::Active, 1),
        register_cert(&"a".repeat(129), 1, pb::CertificateStatus::Active, 1),
        register_cert("ab", 1, pb::CertificateStatus::Unspecified, 1),
        pb::Command {
            command: Some(C::RegisterCertificate(pb::RegisterCertificate {
                sn: "ab".into(),
                status: 99,
                ..Default::default()
            })),
        },
        set_status("ab", pb::CertificateStatus::Unspecified, 1),
        set_status("", pb::CertificateStatus::Active, 1),
    ];
    for command in &bad {
        let (result, changes) = apply(&mut r, command);
        assert!(
            matches!(&result, R::Rejected(rej) if rej.reason == pb::RejectReason::Invalid as i32),
            "{command:?} gave {result:?}"
        );
        assert!(changes.is_empty());
    }
    assert_eq!(r, Registry::default());
}

#[test]
fn certificates_survive_a_snapshot_and_an_older_snapshot_has_none() {
    let mut r = Registry::default();
    apply(
        &mut r,
        &register_cert("02", 1, pb::CertificateStatus::Active, 10),
    );
    apply(
        &mut r,
        &register_cert("01", 2, pb::CertificateStatus::PendingActivation, 11),
    );
    apply(
        &mut r,
        &set_status("02", pb::CertificateStatus::Inactive, 12),
    );
    let bytes = r.to_snapshot();
    let back = Registry::from_snapshot(&bytes).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.to_snapshot(), bytes);
    let sns: Vec<&str> = back.certificates().map(|c| c.sn.as_str()).collect();
    assert_eq!(sns, ["01", "02"]);
    // A snapshot written before the certificate registry (no field 20) reads as none.
    let empty = Registry::default().to_snapshot();
    assert_eq!(
        Registry::from_snapshot(&empty)
            .unwrap()
            .certificates()
            .count(),
        0
    );
    // A damaged record (an unknown status) is an error naming it, not a guess.
    let mut message = pb::RegistrySnapshot::default();
    message.certificates.push(pb::CertificateRecord {
        sn: "0a".into(),
        status: 42,
        ..Default::default()
    });
    let mut damaged = vec![SNAPSHOT_FORMAT];
    prost::Message::encode_raw(&message, &mut damaged);
    assert!(Registry::from_snapshot(&damaged).is_err());
}

fn status_strategy() -> impl Strategy<Value = pb::CertificateStatus> {
    prop_oneof![
        Just(pb::CertificateStatus::PendingActivation),
        Just(pb::CertificateStatus::Active),
        Just(pb::CertificateStatus::Inactive),
        Just(pb::CertificateStatus::Revoked),
    ]
}

fn command_strategy() -> impl Strategy<Value = pb::Command> {
    let sn = prop_oneof![Just("0a"), Just("0b"), Just("ff"), Just("")];
    prop_oneof![
        (sn.clone(), 1u64..4, status_strategy(), 0u64..1000)
            .prop_map(|(sn, node, status, at)| register_cert(sn, node, status, at)),
        (sn, status_strategy(), 0u64..1000).prop_map(|(sn, status, at)| set_status(sn, status, at)),
    ]
}

proptest! {
    /// Two members applying the same log hold equal registries, give equal answers and
    /// write equal snapshot bytes; the snapshot restores the same registry.
    #[test]
    fn applying_certificate_commands_is_deterministic(
        commands in proptest::collection::vec(command_strategy(), 0..40)
    ) {
        let (mut one, mut two) = (Registry::default(), Registry::default());
        for c in &commands {
            let a = apply(&mut one, c);
            let b = apply(&mut two, c);
            prop_assert_eq!(a, b);
        }
        prop_assert_eq!(&one, &two);
        prop_assert_eq!(one.to_snapshot(), two.to_snapshot());
        prop_assert_eq!(Registry::from_snapshot(&one.to_snapshot()).unwrap(), one);
    }
}
