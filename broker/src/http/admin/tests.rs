//! The admin router served over real HTTP, against a real broker (temporary storage) whose
//! sessions are attached by hand, so kicks can be observed on their channel.

mod cluster;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use skein_storage::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio_util::sync::CancellationToken;

use super::router;
use crate::broker::Broker;
use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions};
use crate::config::Config;
use crate::events::{ClientInfo, EventBus, NodeInfo, Transport};
use crate::http::{compose, health_routes, serve, HealthState};
use crate::local_cluster::LocalCluster;
use crate::message::{now_ms, Message, MessageProperties};
use crate::session::{Attachment, Kick, KickSignal, Session, Subscription};
use skein_seam::{ClientId, ClusterHandle, NodeId};

fn broker() -> Arc<Broker> {
    broker_in(Arc::new(LocalCluster::new(NodeId(1))))
}

/// A broker (node 1, "test-node") whose cluster is `cluster`.
fn broker_in(cluster: Arc<dyn ClusterHandle>) -> Arc<Broker> {
    let events = EventBus::new(NodeInfo {
        node: "127.0.0.1:1883".into(),
        node_ip: "127.0.0.1".into(),
        node_name: "test-node".into(),
    });
    Broker::new(
        Config::default(),
        Store::open_temporary().unwrap(),
        cluster,
        events,
        CancellationToken::new(),
    )
    .unwrap()
}

/// Attaches a pretend connection to a new session; the receiver sees its kicks.
fn online(b: &Broker, id: &str, username: Option<&str>) -> (Arc<Session>, Arc<KickSignal>) {
    let s = b.get_or_create_session(&ClientId::new(id));
    let rx = KickSignal::new();
    let tx = rx.clone();
    let mut st = s.state();
    st.protocol_level = 5;
    st.attach(
        Attachment {
            connection_id: 1,
            epoch: 0,
            kick: tx,
        },
        Arc::new(ClientInfo {
            client_id: ClientId::new(id),
            username: username.map(std::sync::Arc::from),
            peer: "10.1.2.3:4567".parse().unwrap(),
            sockname: std::sync::Arc::new("127.0.0.1:1883".parse().unwrap()),
            protocol: ProtocolVersion::V5,
            transport: Transport::Tcp,
            keepalive: 30,
            clean_start: true,
            connected_at_ms: 1_700_000_000_000,
            will: None,
        }),
    );
    drop(st);
    (s.clone(), rx)
}

/// An offline persistent session, as one that outlived its connection.
fn offline(b: &Broker, id: &str) -> Arc<Session> {
    let s = b.get_or_create_session(&ClientId::new(id));
    let mut st = s.state();
    st.protocol_level = 4;
    st.expiry_interval = 3600;
    st.disconnected_at_ms = crate::session::OptionalMs::at(1_700_000_000_500);
    drop(st);
    s
}

fn sub(qos: QoS, id: Option<u32>) -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos,
            no_local: true,
            retain_as_published: false,
            retain_handling: 2,
        },
        subscription_id: id,
    }
}

async fn start(b: Arc<Broker>, token: Option<&str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = compose(vec![
        health_routes(HealthState::new()),
        router(b, token.map(str::to_owned)),
    ]);
    tokio::spawn(serve(
        listener,
        routes,
        crate::http::Limits::default(),
        CancellationToken::new(),
    ));
    addr
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The client ids of a `/clients` listing, in order.
    fn ids(&self) -> Vec<String> {
        let v = self.json();
        v["data"]
            .as_array()
            .unwrap_or_else(|| panic!("no data array: {v}"))
            .iter()
            .map(|c| c["clientid"].as_str().unwrap().to_owned())
            .collect()
    }

    fn assert_error(&self, status: u16, contains: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.head.contains("content-type: application/json"),
            "{}",
            self.head
        );
        let error = self.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(contains), "{error:?} lacks {contains:?}");
    }
}

async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(&format!("{h}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("response timed out")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("no header end");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    call(addr, "GET", path, &[], "").await
}

#[tokio::test]
async fn clients_are_listed_filtered_and_paged() {
    let b = broker();
    let _a = online(&b, "a", Some("u1"));
    let _b = online(&b, "b", Some("u2"));
    let _c = online(&b, "c", None);
    offline(&b, "d");
    let addr = start(b, None).await;

    let all = get(addr, "/api/v1/clients").await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.ids(), ["a", "b", "c", "d"]);
    assert_eq!(
        all.json()["meta"],
        json!({"page": 1, "limit": 100, "count": 4, "hasnext": false})
    );
    let d = &all.json()["data"][3];
    assert_eq!(d["connected"], json!(false));
    assert_eq!(d["proto_ver"], json!(4));
    assert_eq!(d["expiry_interval"], json!(3600));
    assert_eq!(d["disconnected_at"], json!(1_700_000_000_500u64));
    for field in [
        "username",
        "peername",
        "keepalive",
        "clean_start",
        "connected_at",
    ] {
        assert_eq!(d[field], Value::Null, "{field}");
    }

    let cases: &[(&str, &[&str])] = &[
        ("connected=false", &["d"]),
        ("connected=true", &["a", "b", "c"]),
        ("username=u1", &["a"]),
        ("username=u1&connected=false", &[]),
        ("node=test-node", &["a", "b", "c", "d"]),
        ("node=127.0.0.1:1883", &["a", "b", "c", "d"]),
        ("node=127.0.0.1", &["a", "b", "c", "d"]),
        ("node=elsewhere", &[]),
        ("limit=2&page=2", &["c", "d"]),
        ("limit=3&page=1", &["a", "b", "c"]),
        ("page=9", &[]),
    ];
    for (query, want) in cases {
        let answer = get(addr, &format!("/api/v1/clients?{query}")).await;
        assert_eq!(answer.status, 200, "{query}: {}", answer.body);
        assert_eq!(answer.ids(), *want, "{query}");
    }
    let paged = get(addr, "/api/v1/clients?limit=3").await.json();
    assert_eq!(
        paged["meta"],
        json!({"page": 1, "limit": 3, "count": 4, "hasnext": true})
    );
    let capped = get(addr, "/api/v1/clients?limit=5000").await.json();
    assert_eq!(capped["meta"]["limit"], json!(1000));

    get(addr, "/api/v1/clients?page=0")
        .await
        .assert_error(400, "\"page\"");
    get(addr, "/api/v1/clients?connected=maybe")
        .await
        .assert_error(400, "true or false");
    get(addr, "/api/v1/clients?clientid=a")
        .await
        .assert_error(400, "unknown query parameter");
}

#[tokio::test]
async fn client_detail_has_every_field_and_ids_are_percent_decoded() {
    let b = broker();
    let (s, _rx) = online(&b, "dev/1 é", Some("alice"));
    b.subscribe(&s, "x/#", sub(QoS::AtLeastOnce, Some(7)));
    b.subscribe(&s, "$share/g/y", sub(QoS::ExactlyOnce, None));
    let addr = start(b, None).await;

    let answer = get(addr, "/api/v1/clients/dev%2F1%20%C3%A9").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let v = answer.json();
    assert_eq!(v["clientid"], json!("dev/1 é"));
    assert_eq!(v["username"], json!("alice"));
    assert_eq!(v["node"], json!("test-node"));
    assert_eq!(v["node_id"], json!(1));
    assert_eq!(v["node_ip"], json!("127.0.0.1"));
    assert_eq!(v["peername"], json!("10.1.2.3:4567"));
    assert_eq!(v["proto_ver"], json!(5));
    assert_eq!(v["keepalive"], json!(30));
    assert_eq!(v["clean_start"], json!(true));
    assert_eq!(v["connected"], json!(true));
    assert_eq!(v["connected_at"], json!(1_700_000_000_000u64));
    assert_eq!(v["disconnected_at"], Value::Null);
    assert_eq!(v["inflight_cnt"], json!(0));
    assert_eq!(v["mqueue_len"], json!(0));
    assert_eq!(v["mqueue_max"], json!(1000));
    assert_eq!(v["subscriptions_cnt"], json!(2));
    assert_eq!(
        v["subscriptions"],
        json!([
            {"clientid": "dev/1 é", "topic": "$share/g/y", "qos": 2, "no_local": true,
             "retain_as_published": false, "retain_handling": 2, "subscription_identifier": null},
            {"clientid": "dev/1 é", "topic": "x/#", "qos": 1, "no_local": true,
             "retain_as_published": false, "retain_handling": 2, "subscription_identifier": 7},
        ])
    );

    get(addr, "/api/v1/clients/nobody")
        .await
        .assert_error(404, "client not found");
    // The list answer leaves the subscriptions out.
    let list = get(addr, "/api/v1/clients").await.json();
    assert!(list["data"][0].get("subscriptions").is_none(), "{list}");
}

#[tokio::test]
async fn delete_kicks_the_connection_and_clear_session_ends_the_session() {
    let b = broker();
    let (a, a_kicks) = online(&b, "a", None);
    let (_c, c_kicks) = online(&b, "c", None);
    b.subscribe(&a, "t", sub(QoS::AtLeastOnce, None));
    let d = offline(&b, "d");
    b.subscribe(&d, "t", sub(QoS::AtLeastOnce, None));
    let addr = start(b.clone(), None).await;

    let answer = call(addr, "DELETE", "/api/v1/clients/a", &[], "").await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    assert_eq!(a_kicks.try_recv(), Some(Kick::Administrative));
    assert!(
        b.find_session(&ClientId::new("a")).is_some(),
        "a kick keeps the session"
    );

    call(addr, "DELETE", "/api/v1/clients/d", &[], "")
        .await
        .assert_error(404, "not connected");
    call(addr, "DELETE", "/api/v1/clients/zz", &[], "")
        .await
        .assert_error(404, "not connected");
    call(
        addr,
        "DELETE",
        "/api/v1/clients/d?clear_session=yes",
        &[],
        "",
    )
    .await
    .assert_error(400, "clear_session");

    let answer = call(
        addr,
        "DELETE",
        "/api/v1/clients/d?clear_session=true",
        &[],
        "",
    )
    .await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    assert!(b.find_session(&ClientId::new("d")).is_none());
    assert_eq!(
        b.subscription_count(),
        1,
        "d's subscription is gone, a's stays"
    );
    call(
        addr,
        "DELETE",
        "/api/v1/clients/d?clear_session=true",
        &[],
        "",
    )
    .await
    .assert_error(404, "no session");

    // Online: kicked now, and the session ends when the connection detaches.
    let answer = call(
        addr,
        "DELETE",
        "/api/v1/clients/c?clear_session=true",
        &[],
        "",
    )
    .await;
    assert_eq!(answer.status, 204, "{}", answer.body);
    assert_eq!(c_kicks.try_recv(), Some(Kick::Administrative));
    let c = b.find_session(&ClientId::new("c")).unwrap();
    assert_eq!(c.state().expiry_interval, 0);
}

#[tokio::test]
async fn subscriptions_are_listed_and_filtered() {
    let b = broker();
    let (a, _ra) = online(&b, "a", None);
    let (c, _rc) = online(&b, "c", None);
    b.subscribe(&a, "x/#", sub(QoS::AtLeastOnce, Some(3)));
    b.subscribe(&a, "$share/g/y", sub(QoS::AtMostOnce, None));
    b.subscribe(&c, "x/#", sub(QoS::ExactlyOnce, None));
    let addr = start(b, None).await;

    let rows = |v: Value| -> Vec<(String, String)> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap().to_owned();
                (s("clientid"), s("topic"))
            })
            .collect()
    };
    let pair = |c: &str, t: &str| (c.to_owned(), t.to_owned());
    let all = get(addr, "/api/v1/subscriptions").await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(
        rows(all.json()),
        [pair("a", "$share/g/y"), pair("a", "x/#"), pair("c", "x/#")]
    );
    assert_eq!(all.json()["meta"]["count"], json!(3));
    let first = &all.json()["data"][1];
    assert_eq!(first["qos"], json!(1));
    assert_eq!(first["subscription_identifier"], json!(3));
    assert_eq!(first["no_local"], json!(true));
    assert_eq!(first["retain_handling"], json!(2));

    let by_client = get(addr, "/api/v1/subscriptions?clientid=c").await.json();
    assert_eq!(rows(by_client), [pair("c", "x/#")]);
    let by_topic = get(addr, "/api/v1/subscriptions?topic=x%2F%23")
        .await
        .json();
    assert_eq!(rows(by_topic), [pair("a", "x/#"), pair("c", "x/#")]);
    let shared = get(addr, "/api/v1/subscriptions?topic=%24share%2Fg%2Fy")
        .await
        .json();
    assert_eq!(rows(shared), [pair("a", "$share/g/y")]);
    let nobody = get(addr, "/api/v1/subscriptions?clientid=zz").await.json();
    assert_eq!(nobody["meta"]["count"], json!(0));
    let paged = get(addr, "/api/v1/subscriptions?limit=1&page=3")
        .await
        .json();
    assert_eq!(rows(paged), [pair("c", "x/#")]);
}

fn retained(topic: &str, payload: &'static [u8], publisher: Option<&str>) -> Arc<Message> {
    Arc::new(Message {
        topic: Arc::from(topic),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: MessageProperties {
            message_expiry_interval: Some(60),
            ..Default::default()
        },
        received_at_ms: now_ms(),
        publisher: publisher.map(ClientId::new),
        publisher_username: None,
        publish_id: None,
    })
}

#[tokio::test]
async fn retained_messages_are_listed_by_filter_with_binary_payloads_in_base64() {
    let b = broker();
    b.route(retained("a/1", b"one", Some("pub")));
    b.route(retained("a/2", &[0xff, 0x00], None));
    b.route(retained("b/1", b"three", None));
    b.route(retained("$SYS/x", b"sys", None));
    let addr = start(b, None).await;

    let topics = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["topic"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = get(addr, "/api/v1/topics/retained").await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(topics(&all.json()), ["$SYS/x", "a/1", "a/2", "b/1"]);

    let a = get(addr, "/api/v1/topics/retained?topic=a/%23")
        .await
        .json();
    assert_eq!(topics(&a), ["a/1", "a/2"]);
    assert_eq!(a["meta"]["count"], json!(2));
    let one = &a["data"][0];
    assert_eq!(one["payload"], json!("one"));
    assert_eq!(one["payload_encoding"], json!("plain"));
    assert_eq!(one["qos"], json!(1));
    assert_eq!(one["from_clientid"], json!("pub"));
    let received = one["received_at"].as_u64().unwrap();
    assert!(received.abs_diff(now_ms()) < 60_000, "{received}");
    assert_eq!(one["expires_at"], json!(received + 60_000));
    let two = &a["data"][1];
    assert_eq!(two["payload"], json!("/wA="));
    assert_eq!(two["payload_encoding"], json!("base64"));
    assert_eq!(two["from_clientid"], Value::Null);

    let plus = get(addr, "/api/v1/topics/retained?topic=%2B/1")
        .await
        .json();
    assert_eq!(topics(&plus), ["a/1", "b/1"]);
    get(addr, "/api/v1/topics/retained?topic=a/%23/b")
        .await
        .assert_error(400, "invalid topic filter");
}

async fn post(addr: SocketAddr, body: &str) -> Answer {
    let headers = ["Content-Type: application/json"];
    call(addr, "POST", "/api/v1/publish", &headers, body).await
}

#[tokio::test]
async fn publish_routes_like_a_client_publish_and_validates() {
    let b = broker();
    let (s, _rx) = online(&b, "s", None);
    b.subscribe(&s, "t/#", sub(QoS::ExactlyOnce, None));
    let addr = start(b.clone(), None).await;

    let answer = post(
        addr,
        r#"{"topic":"t/1","payload":"hi","qos":1,
            "properties":{"user_properties":{"k":"v","a":"b"},"content_type":"text/plain",
                          "message_expiry_interval":30}}"#,
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), json!({"matched": 1}));
    {
        let st = s.state();
        assert_eq!(st.queue.len(), 1);
        let d = &st.queue[0].delivery;
        assert_eq!(d.qos, QoS::AtLeastOnce);
        assert_eq!(&*d.message.topic, "t/1");
        assert_eq!(d.message.payload, Bytes::from_static(b"hi"));
        assert_eq!(d.message.publisher, None);
        let p = &d.message.properties;
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.message_expiry_interval, Some(30));
        assert_eq!(
            p.user_properties,
            [
                ("k".to_owned(), "v".to_owned()),
                ("a".to_owned(), "b".to_owned())
            ]
        );
    }

    // Base64 and retain: the retained message is stored; nobody matches "r".
    let answer = post(
        addr,
        r#"{"topic":"r","payload":"/wA=","payload_encoding":"base64","retain":true}"#,
    )
    .await;
    assert_eq!(answer.json(), json!({"matched": 0}));
    let kept = b.retained.matching("r", now_ms());
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].payload, Bytes::from_static(&[0xff, 0x00]));
    assert_eq!(kept[0].qos, QoS::AtMostOnce);

    let cases = [
        (r#"{"topic":"t/#","payload":"x"}"#, "invalid topic name"),
        (r#"{"topic":"","payload":"x"}"#, "invalid topic name"),
        (r#"{"topic":"t","qos":3}"#, "qos must be 0, 1 or 2"),
        (
            r#"{"topic":"t","payload":"!!","payload_encoding":"base64"}"#,
            "base64",
        ),
        (r#"{"topic":"t","retained":true}"#, "unknown field"),
        (r#"{"topic":"t","#, "invalid publish request"),
        ("", "invalid publish request"),
        (
            r#"{"topic":"t","payload":"/w==","payload_encoding":"base64","properties":{"payload_format_indicator":1}}"#,
            "not UTF-8",
        ),
        (
            r#"{"topic":"t","properties":{"response_topic":"a/+"}}"#,
            "response_topic",
        ),
    ];
    for (body, error) in cases {
        post(addr, body).await.assert_error(400, error);
    }
    assert_eq!(s.state().queue.len(), 1, "refused publishes are not routed");
    call(addr, "GET", "/api/v1/publish", &[], "")
        .await
        .assert_error(405, "method not allowed");
}

#[tokio::test]
async fn a_token_guards_the_api_but_not_the_probes() {
    let b = broker();
    let addr = start(b, Some("s3cret")).await;

    let refused = get(addr, "/api/v1/clients").await;
    refused.assert_error(401, "bearer token");
    assert!(
        refused.head.contains("www-authenticate: bearer"),
        "{}",
        refused.head
    );
    for header in [
        "Authorization: Bearer s3creT",
        "Authorization: Basic czNjcmV0",
        "Authorization: Bearer",
    ] {
        let answer = call(addr, "GET", "/api/v1/clients", &[header], "").await;
        answer.assert_error(401, "bearer token");
    }
    let post_refused = call(addr, "POST", "/api/v1/publish", &[], r#"{"topic":"t"}"#).await;
    post_refused.assert_error(401, "bearer token");

    let ok = call(
        addr,
        "GET",
        "/api/v1/clients",
        &["Authorization: Bearer s3cret"],
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let ok = call(
        addr,
        "DELETE",
        "/api/v1/clients/x",
        &["authorization: bearer s3cret"],
        "",
    )
    .await;
    ok.assert_error(404, "not connected");

    assert_eq!(get(addr, "/healthz").await.status, 200);
    get(addr, "/nope").await.assert_error(404, "not found");

    // An empty token means no authentication.
    let open = start(broker(), Some("")).await;
    assert_eq!(get(open, "/api/v1/clients").await.status, 200);
}
