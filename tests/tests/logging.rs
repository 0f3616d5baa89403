//! Logging never takes the node down: with stderr on a full device every log line fails
//! to be written, and the node drops (and counts) them and goes on serving.

use skein_tests::clients::v3;
use skein_tests::{http_request, metric_sum, Node, RawClient, RECV_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stderr_drops_log_lines_and_the_node_keeps_serving() {
    // `2>/dev/full`: every write fails with ENOSPC, as on a full disk.
    let mut node = Node::builder()
        .stderr_path("/dev/full")
        .env("SKEIN_LOG", "debug")
        .start();
    let (mqtt, http) = (node.mqtt_addr(), node.http_addr());

    // Traffic that logs: connects and disconnects, a protocol error, a kick.
    let mut sub = v3::Client::connect(mqtt, "log-sub").await;
    sub.subscribe("log/#", v3::QoS::AtLeastOnce).await;
    for i in 0..5 {
        let mut publ = v3::Client::connect(mqtt, &format!("log-pub-{i}")).await;
        publ.publish("log/a", v3::QoS::AtLeastOnce, false, "m")
            .await;
        publ.disconnect().await;
        assert_eq!(&sub.recv().await.payload[..], b"m");
    }
    let mut bad = RawClient::v311(mqtt, "log-bad").await;
    bad.send(&[0x00, 0x00]).await; // packet type 0 is reserved: a protocol error
    bad.expect_closed(RECV_TIMEOUT).await;
    let _victim = RawClient::v311(mqtt, "log-kicked").await;
    let (status, body) = http_request(http, "DELETE", "/api/v1/clients/log-kicked", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 204, "{body}");

    assert!(node.try_wait().is_none(), "the node died while logging");
    // Still serving after all that.
    let mut publ = v3::Client::connect(mqtt, "log-pub-last").await;
    publ.publish("log/b", v3::QoS::AtLeastOnce, false, "still here")
        .await;
    assert_eq!(&sub.recv().await.payload[..], b"still here");
    let dropped = metric_sum(http, "skein_log_lines_dropped_total", &[]).await;
    assert!(dropped > 0.0, "no dropped log line counted");

    let status = node.terminate();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
}
