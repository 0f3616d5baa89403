//! Interoperability with the mosquitto command-line clients.

use std::time::Duration;

use skein_tests::cli::{mosquitto_pub, Sub};
use skein_tests::clients::v5;
use skein_tests::Node;

fn qos_roundtrip(version: &str) {
    let node = Node::start();
    let addr = node.mqtt_addr();
    let subs: Vec<(String, Sub)> = (0..3)
        .map(|q| {
            let topic = format!("io/{version}/{q}");
            let qs = q.to_string();
            let sub = Sub::start(
                addr,
                &[
                    "-V", version, "-t", &topic, "-q", &qs, "-C", "1", "-W", "10",
                ],
            );
            (topic, sub)
        })
        .collect();
    for q in 0..3 {
        let topic = format!("io/{version}/{q}");
        mosquitto_pub(
            addr,
            &[
                "-V",
                version,
                "-t",
                &topic,
                "-q",
                &q.to_string(),
                "-m",
                &format!("hello {version} q{q}"),
            ],
        );
    }
    for (q, (topic, sub)) in subs.into_iter().enumerate() {
        let (msgs, ok) = sub.finish(Duration::from_secs(10));
        assert!(
            ok,
            "{version} q{q}: mosquitto_sub did not exit cleanly; got {msgs:?}"
        );
        assert_eq!(msgs.len(), 1, "{version} q{q}: {msgs:?}");
        assert_eq!(msgs[0].topic, topic);
        assert_eq!(msgs[0].payload, format!("hello {version} q{q}"));
        assert_eq!(msgs[0].qos as usize, q, "delivered QoS");
    }
}

#[test]
fn mosquitto_clients_qos_0_1_2_v311() {
    qos_roundtrip("mqttv311");
}

#[test]
fn mosquitto_clients_qos_0_1_2_v5() {
    qos_roundtrip("mqttv5");
}

#[test]
fn mosquitto_clients_v31() {
    let node = Node::start();
    let sub = Sub::start(
        node.mqtt_addr(),
        &[
            "-V", "mqttv31", "-t", "io/31", "-q", "1", "-C", "1", "-W", "10",
        ],
    );
    mosquitto_pub(
        node.mqtt_addr(),
        &["-V", "mqttv31", "-t", "io/31", "-q", "1", "-m", "old"],
    );
    let (msgs, ok) = sub.finish(Duration::from_secs(10));
    assert!(ok);
    assert_eq!(
        msgs.iter().map(|m| m.payload.as_str()).collect::<Vec<_>>(),
        vec!["old"]
    );
}

#[test]
fn mosquitto_pub_retained() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    for v in ["mqttv311", "mqttv5"] {
        let topic = format!("io/retained/{v}");
        mosquitto_pub(
            addr,
            &["-V", v, "-t", &topic, "-q", "1", "-r", "-m", "kept"],
        );
        let sub = Sub::start(
            addr,
            &["-V", v, "-t", &topic, "-q", "1", "-C", "1", "-W", "10"],
        );
        let (msgs, ok) = sub.finish(Duration::from_secs(10));
        assert!(ok, "{v}: {msgs:?}");
        assert_eq!(msgs.len(), 1, "{v}: {msgs:?}");
        assert_eq!(
            (msgs[0].payload.as_str(), msgs[0].retain),
            ("kept", true),
            "{v}"
        );

        // clear it: mosquitto_pub -r -n
        mosquitto_pub(addr, &["-V", v, "-t", &topic, "-r", "-n"]);
        let sub = Sub::start(addr, &["-V", v, "-t", &topic, "-C", "1", "-W", "1"]);
        let (msgs, _timed_out) = sub.finish(Duration::from_secs(5));
        assert!(
            msgs.is_empty(),
            "{v}: retained message not cleared: {msgs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_version_and_user_properties() {
    let node = Node::start();
    let addr = node.mqtt_addr();
    // rumqttc v5 subscriber sees user properties set by mosquitto_pub -D
    let mut sub = v5::Client::connect(addr, "xv-sub").await;
    sub.subscribe("io/xv/#", v5::QoS::AtLeastOnce).await;
    let a = addr;
    tokio::task::spawn_blocking(move || {
        mosquitto_pub(
            a,
            &[
                "-V",
                "mqttv5",
                "-t",
                "io/xv/props",
                "-q",
                "1",
                "-m",
                "with props",
                "-D",
                "publish",
                "user-property",
                "origin",
                "mosquitto",
                "-D",
                "publish",
                "content-type",
                "text/plain",
            ],
        )
    })
    .await
    .unwrap();
    let p = sub.recv().await;
    let props = p.properties.expect("properties");
    assert_eq!(
        props.user_properties,
        vec![("origin".to_string(), "mosquitto".to_string())]
    );
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));

    // a v3.1.1 mosquitto_sub receives a v5 rumqttc publish
    let s = tokio::task::spawn_blocking(move || {
        Sub::start(
            a,
            &[
                "-V",
                "mqttv311",
                "-t",
                "io/xv/down",
                "-q",
                "2",
                "-C",
                "1",
                "-W",
                "10",
            ],
        )
    })
    .await
    .unwrap();
    let mut publ = v5::Client::connect(addr, "xv-pub").await;
    publ.publish("io/xv/down", v5::QoS::ExactlyOnce, false, "from v5")
        .await;
    let (msgs, ok) = tokio::task::spawn_blocking(move || s.finish(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(ok, "{msgs:?}");
    assert_eq!((msgs[0].payload.as_str(), msgs[0].qos), ("from v5", 2));
}
