//! The HTTP admin API (`/api/v1/...`) of a real node, driven with real MQTT clients: the
//! client list and detail, kicking (DISCONNECT 0x98), subscriptions, retained messages,
//! publishing through the API, and the bearer token.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skein_tests::clients::{v3, v5};
use skein_tests::codec::{prop, subscribe_with_id};
use skein_tests::{http_request, Connect, Node, RawClient, SubFilter, RECV_TIMEOUT};

const TOKEN_HEADER: &str = "Authorization: Bearer s3cret";

/// One API call: (status, parsed JSON body; `Null` for an empty body).
async fn call(
    http: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, Value) {
    let (status, text) = http_request(http, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"))
    };
    (status, value)
}

/// `GET path`, which must answer 200; the JSON body.
async fn get_ok(http: SocketAddr, path: &str) -> Value {
    let (status, v) = call(http, "GET", path, &[], "").await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

/// Polls `GET path` until `cond` holds on (status, body); panics with the last answer.
async fn get_until(http: SocketAddr, path: &str, cond: impl Fn(u16, &Value) -> bool) -> Value {
    let end = Instant::now() + RECV_TIMEOUT;
    loop {
        let (status, v) = call(http, "GET", path, &[], "").await;
        if cond(status, &v) {
            return v;
        }
        assert!(
            Instant::now() < end,
            "GET {path}: condition not met within {RECV_TIMEOUT:?}; last: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn client_ids(listing: &Value) -> Vec<&str> {
    listing["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array: {listing}"))
        .iter()
        .map(|c| c["clientid"].as_str().expect("clientid is a string"))
        .collect()
}

fn assert_error(status: u16, body: &Value, want_status: u16, contains: &str) {
    assert_eq!(status, want_status, "{body}");
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {body}"));
    assert!(error.contains(contains), "{error:?} lacks {contains:?}");
}

#[tokio::test]
async fn clients_list_and_detail_show_live_and_offline_sessions() {
    let node = Node::start();
    let (mqtt, http) = (node.mqtt_addr(), node.http_addr());

    // A v5 client with a username and a subscription with an identifier.
    let mut connect = Connect::v5("adm-v5").keep_alive(45).session_expiry(600);
    connect.username = Some("alice".into());
    let (mut live5, _, _) = RawClient::connect_ok(mqtt, &connect).await;
    let sub = SubFilter::new("s/+", 1).no_local();
    let codes = live5
        .subscribe_bytes(1, &subscribe_with_id(1, 9, &[sub]))
        .await;
    assert_eq!(codes, [1]);
    // A v3.1.1 client, and a persistent v3.1.1 session that went offline.
    let _live3 = v3::Client::connect(mqtt, "adm-v3").await;
    let mut gone = RawClient::connect_ok(mqtt, &Connect::v311("adm-off").persistent(0))
        .await
        .0;
    assert_eq!(gone.subscribe(1, &[SubFilter::new("o/#", 2)]).await, [2]);
    gone.disconnect().await;
    get_until(http, "/api/v1/clients?connected=false", |_, v| {
        client_ids(v) == ["adm-off"]
    })
    .await;

    let all = get_ok(http, "/api/v1/clients").await;
    assert_eq!(client_ids(&all), ["adm-off", "adm-v3", "adm-v5"]);
    assert_eq!(
        all["meta"],
        json!({"page": 1, "limit": 100, "count": 3, "hasnext": false})
    );
    assert!(
        all["data"][2].get("subscriptions").is_none(),
        "the list leaves subscriptions out"
    );

    let v = get_ok(http, "/api/v1/clients/adm-v5").await;
    assert_eq!(v["clientid"], json!("adm-v5"));
    assert_eq!(v["username"], json!("alice"));
    assert_eq!(v["node"], json!("skein-1"));
    assert_eq!(v["node_ip"], json!("127.0.0.1"));
    let peer = v["peername"].as_str().expect("peername is a string");
    assert!(peer.starts_with("127.0.0.1:") && peer.len() > 10, "{peer}");
    assert_eq!(v["proto_ver"], json!(5));
    assert_eq!(v["keepalive"], json!(45));
    assert_eq!(v["clean_start"], json!(true));
    assert_eq!(v["connected"], json!(true));
    let connected_at = v["connected_at"].as_u64().expect("connected_at is ms");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now.abs_diff(connected_at) < 60_000,
        "connected_at {connected_at} vs now {now}"
    );
    assert_eq!(v["disconnected_at"], Value::Null);
    assert_eq!(v["expiry_interval"], json!(600));
    assert_eq!(v["inflight_cnt"], json!(0));
    assert_eq!(v["mqueue_len"], json!(0));
    assert!(v["mqueue_max"].is_u64(), "{v}");
    assert_eq!(v["subscriptions_cnt"], json!(1));
    assert_eq!(
        v["subscriptions"],
        json!([{"clientid": "adm-v5", "topic": "s/+", "qos": 1, "no_local": true,
                "retain_as_published": false, "retain_handling": 0, "subscription_identifier": 9}])
    );

    let v = get_ok(http, "/api/v1/clients/adm-v3").await;
    assert_eq!(v["proto_ver"], json!(4));
    assert_eq!(v["username"], Value::Null);
    assert_eq!(v["keepalive"], json!(30));
    assert_eq!(v["connected"], json!(true));
    assert_eq!(v["expiry_interval"], json!(0));
    assert_eq!(v["subscriptions"], json!([]));

    let v = get_ok(http, "/api/v1/clients/adm-off").await;
    assert_eq!(v["connected"], json!(false));
    assert_eq!(v["proto_ver"], json!(4));
    assert!(v["disconnected_at"].is_u64(), "{v}");
    for field in [
        "connected_at",
        "peername",
        "keepalive",
        "clean_start",
        "username",
    ] {
        assert_eq!(v[field], Value::Null, "{field} of an offline session");
    }
    assert_eq!(v["subscriptions"][0]["topic"], json!("o/#"));
    assert_eq!(v["subscriptions"][0]["qos"], json!(2));

    let node_addr = mqtt.to_string();
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("connected=true".into(), vec!["adm-v3", "adm-v5"]),
        ("connected=false".into(), vec!["adm-off"]),
        ("username=alice".into(), vec!["adm-v5"]),
        ("username=bob".into(), vec![]),
        ("node=skein-1".into(), vec!["adm-off", "adm-v3", "adm-v5"]),
        (
            format!("node={node_addr}"),
            vec!["adm-off", "adm-v3", "adm-v5"],
        ),
        ("node=skein-2".into(), vec![]),
        ("limit=1&page=2".into(), vec!["adm-v3"]),
    ];
    for (query, want) in cases {
        let v = get_ok(http, &format!("/api/v1/clients?{query}")).await;
        assert_eq!(client_ids(&v), want, "{query}");
    }
    let v = get_ok(http, "/api/v1/clients?limit=1&page=2").await;
    assert_eq!(
        v["meta"],
        json!({"page": 2, "limit": 1, "count": 3, "hasnext": true})
    );
    let v = get_ok(http, "/api/v1/clients?limit=100000").await;
    assert_eq!(v["meta"]["limit"], json!(1000));

    let (status, v) = call(http, "GET", "/api/v1/clients?page=0", &[], "").await;
    assert_error(status, &v, 400, "page");
    let (status, v) = call(http, "GET", "/api/v1/clients/nobody", &[], "").await;
    assert_error(status, &v, 404, "client not found");

    // Client ids are path segments: '/', spaces and non-ASCII arrive percent-encoded.
    let _odd = RawClient::v311(mqtt, "dev/α 1").await;
    let v = get_ok(http, "/api/v1/clients/dev%2F%CE%B1%201").await;
    assert_eq!(v["clientid"], json!("dev/α 1"));
    assert_eq!(v["connected"], json!(true));
    live5.ping().await;
}

#[tokio::test]
async fn delete_kicks_a_v5_client_with_disconnect_0x98() {
    let node = Node::start();
    let (mqtt, http) = (node.mqtt_addr(), node.http_addr());

    let mut victim = RawClient::v5(mqtt, "kick-me").await;
    let (status, body) = call(http, "DELETE", "/api/v1/clients/kick-me", &[], "").await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(body, Value::Null, "204 has no body");
    victim.expect_disconnect(0x98, RECV_TIMEOUT).await;
    // A clean session ends with its connection.
    get_until(http, "/api/v1/clients/kick-me", |s, _| s == 404).await;
    let (status, v) = call(http, "DELETE", "/api/v1/clients/kick-me", &[], "").await;
    assert_error(status, &v, 404, "not connected");

    // A persistent session survives a kick; clear_session=true ends it.
    let connect = Connect::v5("kick-keep").persistent(600);
    let (mut keeper, _, _) = RawClient::connect_ok(mqtt, &connect).await;
    assert_eq!(keeper.subscribe(1, &[SubFilter::new("k/#", 1)]).await, [1]);
    let (status, _) = call(http, "DELETE", "/api/v1/clients/kick-keep", &[], "").await;
    assert_eq!(status, 204);
    keeper.expect_disconnect(0x98, RECV_TIMEOUT).await;
    let v = get_until(http, "/api/v1/clients/kick-keep", |_, v| {
        v["connected"] == json!(false)
    })
    .await;
    assert_eq!(v["subscriptions_cnt"], json!(1));
    let (status, v) = call(http, "DELETE", "/api/v1/clients/kick-keep", &[], "").await;
    assert_error(status, &v, 404, "not connected");

    let path = "/api/v1/clients/kick-keep?clear_session=true";
    let (status, _) = call(http, "DELETE", path, &[], "").await;
    assert_eq!(status, 204);
    let (status, _) = call(http, "GET", "/api/v1/clients/kick-keep", &[], "").await;
    assert_eq!(status, 404);
    let subs = get_ok(http, "/api/v1/subscriptions?clientid=kick-keep").await;
    assert_eq!(subs["meta"]["count"], json!(0));
    let (status, v) = call(http, "DELETE", path, &[], "").await;
    assert_error(status, &v, 404, "no session");
    // The session really is gone: reconnecting finds none.
    let (_back, present, _) =
        RawClient::connect_ok(mqtt, &Connect::v5("kick-keep").persistent(600)).await;
    assert!(!present, "session present after clear_session");
}

#[tokio::test]
async fn subscriptions_and_retained_messages_are_listed() {
    let node = Node::start();
    let (mqtt, http) = (node.mqtt_addr(), node.http_addr());

    let mut a = v5::Client::connect(mqtt, "sub-a").await;
    a.subscribe("x/#", v5::QoS::AtLeastOnce).await;
    a.subscribe("$share/g/y", v5::QoS::ExactlyOnce).await;
    let mut b = v3::Client::connect(mqtt, "sub-b").await;
    b.subscribe("x/#", v3::QoS::AtMostOnce).await;

    let all = get_ok(http, "/api/v1/subscriptions").await;
    let rows: Vec<(&str, &str, u64)> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["clientid"].as_str().unwrap(),
                r["topic"].as_str().unwrap(),
                r["qos"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("sub-a", "$share/g/y", 2),
            ("sub-a", "x/#", 1),
            ("sub-b", "x/#", 0)
        ]
    );
    let first = &all["data"][0];
    for (field, kind) in [
        ("no_local", "bool"),
        ("retain_as_published", "bool"),
        ("retain_handling", "u64"),
    ] {
        let ok = if kind == "bool" {
            first[field].is_boolean()
        } else {
            first[field].is_u64()
        };
        assert!(ok, "{field} should be {kind}: {first}");
    }
    assert_eq!(first["subscription_identifier"], Value::Null);
    let v = get_ok(http, "/api/v1/subscriptions?topic=x%2F%23").await;
    assert_eq!(client_ids(&v), ["sub-a", "sub-b"]);
    let v = get_ok(http, "/api/v1/subscriptions?clientid=sub-b").await;
    assert_eq!(v["meta"]["count"], json!(1));
    let v = get_ok(
        http,
        "/api/v1/subscriptions?topic=%24share%2Fg%2Fy&clientid=sub-a",
    )
    .await;
    assert_eq!(v["data"][0]["topic"], json!("$share/g/y"));

    // Retained messages, one of them binary.
    b.publish("r/1", v3::QoS::AtLeastOnce, true, "hello").await;
    b.publish("r/2", v3::QoS::AtMostOnce, true, vec![0xffu8, 0x00])
        .await;
    b.publish("other", v3::QoS::AtLeastOnce, true, "x").await;
    let v = get_until(http, "/api/v1/topics/retained?topic=r/%23", |_, v| {
        v["meta"]["count"] == json!(2)
    })
    .await;
    let one = &v["data"][0];
    assert_eq!(one["topic"], json!("r/1"));
    assert_eq!(one["qos"], json!(1));
    assert_eq!(one["payload"], json!("hello"));
    assert_eq!(one["payload_encoding"], json!("plain"));
    assert_eq!(one["from_clientid"], json!("sub-b"));
    assert!(one["received_at"].is_u64(), "{one}");
    assert_eq!(one["expires_at"], Value::Null);
    let two = &v["data"][1];
    assert_eq!(two["topic"], json!("r/2"));
    assert_eq!(two["payload"], json!("/wA="));
    assert_eq!(two["payload_encoding"], json!("base64"));
    let all = get_ok(http, "/api/v1/topics/retained").await;
    assert_eq!(all["meta"]["count"], json!(3));
    let (status, v) = call(
        http,
        "GET",
        "/api/v1/topics/retained?topic=r/%23/x",
        &[],
        "",
    )
    .await;
    assert_error(status, &v, 400, "invalid topic filter");
}

async fn publish(http: SocketAddr, body: &str) -> (u16, Value) {
    call(
        http,
        "POST",
        "/api/v1/publish",
        &["Content-Type: application/json"],
        body,
    )
    .await
}

#[tokio::test]
async fn publish_through_the_api_reaches_subscribers() {
    let node = Node::start();
    let (mqtt, http) = (node.mqtt_addr(), node.http_addr());

    let mut sub = RawClient::v5(mqtt, "api-sub").await;
    assert_eq!(sub.subscribe(1, &[SubFilter::new("p/#", 1)]).await, [1]);
    let (status, v) = publish(
        http,
        r#"{"topic":"p/1","payload":"hi","qos":1,"retain":false,
            "properties":{"user_properties":{"k":"v"},"content_type":"text/plain","message_expiry_interval":60}}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"matched": 1}));
    let p = sub.expect_publish(RECV_TIMEOUT).await;
    assert_eq!(p.topic, "p/1");
    assert_eq!(p.payload, b"hi");
    assert_eq!(p.qos, 1);
    assert_eq!(p.props.str(prop::CONTENT_TYPE), Some("text/plain"));
    assert_eq!(
        p.props.user_properties(),
        [("k".to_owned(), "v".to_owned())]
    );
    let expiry = p
        .props
        .int(prop::MESSAGE_EXPIRY_INTERVAL)
        .expect("expiry forwarded");
    assert!((59..=60).contains(&expiry), "{expiry}");

    // Base64 and retain: a later subscriber gets the retained message.
    let (status, v) = publish(
        http,
        r#"{"topic":"p/r","payload":"/wA=","payload_encoding":"base64","retain":true}"#,
    )
    .await;
    assert_eq!((status, v), (200, json!({"matched": 1})));
    assert_eq!(sub.expect_publish(RECV_TIMEOUT).await.payload, [0xff, 0x00]);
    let mut late = RawClient::v311(mqtt, "api-late").await;
    late.subscribe(1, &[SubFilter::new("p/r", 0)]).await;
    let r = late.expect_publish(RECV_TIMEOUT).await;
    assert!(r.retain);
    assert_eq!(r.payload, [0xff, 0x00]);

    // Queued for an offline persistent session, and on disk before the answer.
    let persistent = Connect::v5("api-off").persistent(600);
    let (mut off, _, _) = RawClient::connect_ok(mqtt, &persistent).await;
    assert_eq!(off.subscribe(1, &[SubFilter::new("q/1", 1)]).await, [1]);
    off.disconnect().await;
    get_until(http, "/api/v1/clients/api-off", |_, v| {
        v["connected"] == json!(false)
    })
    .await;
    let (status, v) = publish(http, r#"{"topic":"q/1","payload":"later","qos":1}"#).await;
    assert_eq!((status, v), (200, json!({"matched": 1})));
    let v = get_ok(http, "/api/v1/clients/api-off").await;
    assert_eq!(v["mqueue_len"], json!(1));
    let (mut back, present, _) = RawClient::connect_ok(mqtt, &persistent).await;
    assert!(present);
    assert_eq!(back.expect_publish(RECV_TIMEOUT).await.payload, b"later");

    // Nobody subscribes: matched 0. Bad requests: clear JSON errors, nothing routed.
    let (status, v) = publish(http, r#"{"topic":"nobody/here","payload":"x"}"#).await;
    assert_eq!((status, v), (200, json!({"matched": 0})));
    let bad = [
        (r#"{"topic":"p/#","payload":"x"}"#, "invalid topic name"),
        (r#"{"topic":"p/1","qos":5}"#, "qos must be 0, 1 or 2"),
        (
            r#"{"topic":"p/1","payload":"%%","payload_encoding":"base64"}"#,
            "base64",
        ),
        (r#"{"topic":"p/1","qoss":1}"#, "unknown field"),
        ("not json", "invalid publish request"),
    ];
    for (body, error) in bad {
        let (status, v) = publish(http, body).await;
        assert_error(status, &v, 400, error);
    }
    sub.expect_no_publish(skein_tests::QUIET).await;
    let (status, v) = call(http, "PUT", "/api/v1/publish", &[], "").await;
    assert_error(status, &v, 405, "method not allowed");
}

#[tokio::test]
async fn api_token_guards_every_api_route_but_not_the_probes() {
    let node = Node::builder().env("SKEIN_API_TOKEN", "s3cret").start();
    let http = node.http_addr();
    let _c = RawClient::v311(node.mqtt_addr(), "tok-c").await;

    let routes = [
        ("GET", "/api/v1/clients"),
        ("GET", "/api/v1/clients/tok-c"),
        ("DELETE", "/api/v1/clients/tok-c"),
        ("GET", "/api/v1/subscriptions"),
        ("GET", "/api/v1/topics/retained"),
        ("POST", "/api/v1/publish"),
    ];
    for (method, path) in routes {
        for headers in [
            &[][..],
            &["Authorization: Bearer wrong"],
            &["Authorization: Basic czNjcmV0"],
        ] {
            let (status, v) = call(http, method, path, headers, "").await;
            assert_error(status, &v, 401, "bearer token");
        }
    }
    let v = call(http, "GET", "/api/v1/clients", &[TOKEN_HEADER], "").await;
    assert_eq!(v.0, 200, "{}", v.1);
    assert_eq!(client_ids(&v.1), ["tok-c"]);
    let (status, v) = call(
        http,
        "POST",
        "/api/v1/publish",
        &[TOKEN_HEADER, "Content-Type: application/json"],
        r#"{"topic":"t","payload":"x"}"#,
    )
    .await;
    assert_eq!((status, v), (200, json!({"matched": 0})));
    for probe in ["/healthz", "/readyz"] {
        let (status, _) = call(http, "GET", probe, &[], "").await;
        assert_eq!(status, 200, "{probe}");
    }

    // Without the setting the API is open.
    let open = Node::start();
    let (status, v) = call(open.http_addr(), "GET", "/api/v1/clients", &[], "").await;
    assert_eq!((status, v["meta"]["count"].clone()), (200, json!(0)));
}
