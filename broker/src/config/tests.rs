//! Tests of configuration loading: layers, every setting, one-line errors.

use super::*;
use crate::events::EventKind;
use clap::CommandFactory;
use skein_storage::MinFree;
use std::io::Write;

fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let args = std::iter::once("skein").chain(args.iter().copied());
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load(args, env)
}

fn toml_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(contents.as_bytes())
        .expect("write temp file");
    file
}

fn path_of(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().expect("utf-8 temp path")
}

/// Loads expecting failure and checks the one-line shape every error must have.
fn error(args: &[&str], env: &[(&str, &str)], setting: &str) -> String {
    let err = load(args, env).expect_err("expected a config error");
    assert_eq!(err.exit_code(), EXIT_CODE);
    let message = err.to_string();
    assert!(!message.contains('\n'), "multi-line message: {message:?}");
    let prefix = format!("config error: {setting}: ");
    assert!(
        message.starts_with(&prefix),
        "{message:?} should start with {prefix:?}"
    );
    message
}

#[test]
fn defaults() {
    let config = load(&[], &[]).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.node_id, 1);
    assert_eq!(config.node_name, "skein-1");
    assert_eq!(config.data_dir, PathBuf::from("./data"));
    assert_eq!(config.mqtt, "0.0.0.0:1883".parse().unwrap());
    assert_eq!(config.http, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(config.max_connections, 100_000);
    assert_eq!(config.max_packet_size, 1_048_576);
    assert_eq!(config.max_inflight, 128);
    assert_eq!(config.max_queued_messages, 1000);
    assert_eq!(config.max_keepalive, 65_535);
    assert_eq!(config.max_client_id_len, 65_535);
    assert_eq!(config.max_topic_alias, 65_535);
    assert_eq!(config.max_session_expiry_interval, u32::MAX);
    assert!(config.retain_available);
    assert_eq!(config.log, "info,openraft=warn");
    assert_eq!(config.connect_timeout(), Duration::from_secs(10));
    assert_eq!(config.connect_commit_timeout(), Duration::from_secs(5));
    assert_eq!(config.shutdown_timeout(), Duration::from_secs(5));
}

#[test]
fn toml_file_sets_everything() {
    let file = toml_file(
        r#"
        node_id = 7
        node_name = "edge-a"
        data_dir = "/var/lib/skein"
        storage_min_free_bytes = 1048576
        mqtt = "127.0.0.1:1884"
        http = "[::1]:9090"
        http_max_connections = 21
        http_header_timeout_ms = 22
        http_idle_timeout_ms = 23
        http_body_timeout_ms = 24
        http_max_body_bytes = 25
        advertise_addr = "192.0.2.7:1883"
        grpc = "127.0.0.1:7171"
        grpc_advertise = "edge-a.skein:7171"
        peers = "7@edge-a.skein:7171,8@edge-b.skein:7171"
        join = "edge-b.skein:7171"
        raft_heartbeat_ms = 100
        raft_election_timeout_ms = 600
        node_down_after_ms = 2500
        forward_queue_messages = 5000
        max_connections = 50
        max_packet_size = 4096
        max_inflight = 10
        max_queued_messages = 20
        max_keepalive = 300
        connect_timeout_ms = 2500
        connect_commit_timeout_ms = 1500
        park_idle_ms = 0
        worker_threads = 3
        max_client_id_len = 23
        max_topic_alias = 0
        max_session_expiry_interval = 3600
        retain_available = false
        shutdown_timeout_ms = 0
        log = "skein_broker=debug,warn"
        webhook_urls = "http://127.0.0.1:9000/hook"
        webhook_rules = '[{"action": "on_client_connected"}]'
        webhook_timeout_ms = 100
        webhook_max_retries = 0
        webhook_concurrency = 2
        webhook_queue_capacity = 5
        stream_enabled = false
        stream_kinds = ["client.disconnected"]
        stream_retention_secs = 60
        stream_max_entries = 10
        redis_url = "redis://127.0.0.1:6390"
        redis_stream_prefix = "supermq"
        redis_stream_maxlen = 5000
        events_dollar_events = false
        events_dollar_events_kinds = ["client.connected", "session.subscribed"]
        events_dollar_event = true
        events_dollar_event_kinds = "client.connect, message.publish"
        events_presence_topic = "open/KEY/{username}/online"
        events_presence_kinds = "client.connected"
        events_presence_retain = false
        events_queue_capacity = 5
        events_subscribe_usernames = ["ops", "audit"]
        events_qos = 1
        api_token = "t0k"
        mqtts = "127.0.0.1:8883"
        ws = "127.0.0.1:8083"
        wss = "[::1]:8084"
        tls_cert_file = "/etc/skein/server.pem"
        tls_key_file = "/etc/skein/server.key"
        tls_client_ca_file = "/etc/skein/ca.pem"
        tls_client_cert = "required"
        tls_handshake_timeout_ms = 3000
        tls_reload_interval_ms = 500
        use_identity_as_username = true
        use_identity_as_client_id = true
        certificate_auto_activate = false
        "#,
    );
    let config = load(&["--config", path_of(&file)], &[]).unwrap();
    assert_eq!(
        config,
        Config {
            node_id: 7,
            node_id_from_hostname: false,
            node_name: "edge-a".into(),
            data_dir: "/var/lib/skein".into(),
            storage_min_free_bytes: MinFree::Bytes(1_048_576),
            mqtt: "127.0.0.1:1884".parse().unwrap(),
            http: "[::1]:9090".parse().unwrap(),
            http_max_connections: 21,
            http_header_timeout_ms: 22,
            http_idle_timeout_ms: 23,
            http_body_timeout_ms: 24,
            http_max_body_bytes: 25,
            advertise_addr: "192.0.2.7:1883".into(),
            grpc: "127.0.0.1:7171".parse().unwrap(),
            grpc_advertise: "edge-a.skein:7171".into(),
            peers: "7@edge-a.skein:7171,8@edge-b.skein:7171".into(),
            join: "edge-b.skein:7171".into(),
            raft_heartbeat_ms: 100,
            raft_election_timeout_ms: 600,
            node_down_after_ms: 2500,
            forward_queue_messages: 5000,
            max_connections: 50,
            max_packet_size: 4096,
            max_inflight: 10,
            max_queued_messages: 20,
            max_subscriptions_per_session: 10_000,
            max_keepalive: 300,
            connect_timeout_ms: 2500,
            connect_commit_timeout_ms: 1500,
            park_idle_ms: 0,
            worker_threads: 3,
            max_client_id_len: 23,
            max_topic_alias: 0,
            max_session_expiry_interval: 3600,
            retain_available: false,
            shutdown_timeout_ms: 0,
            log: "skein_broker=debug,warn".into(),
            webhook_urls: "http://127.0.0.1:9000/hook".into(),
            webhook_rules: r#"[{"action": "on_client_connected"}]"#.into(),
            webhook_timeout_ms: 100,
            webhook_max_retries: 0,
            webhook_concurrency: 2,
            webhook_queue_capacity: 5,
            stream_enabled: false,
            stream_kinds: KindSet::of(&[EventKind::ClientDisconnected]),
            stream_retention_secs: 60,
            stream_max_entries: 10,
            redis_url: "redis://127.0.0.1:6390".into(),
            redis_stream_prefix: "supermq".into(),
            redis_stream_maxlen: 5000,
            events_dollar_events: false,
            events_dollar_events_kinds: KindSet::of(&[
                EventKind::ClientConnected,
                EventKind::SessionSubscribed
            ]),
            events_dollar_event: true,
            events_dollar_event_kinds: KindSet::of(&[
                EventKind::ClientConnect,
                EventKind::MessagePublish
            ]),
            events_presence_topic: "open/KEY/{username}/online".into(),
            events_presence_kinds: KindSet::of(&[EventKind::ClientConnected]),
            events_presence_retain: false,
            events_queue_capacity: 5,
            events_subscribe_usernames: vec!["ops".into(), "audit".into()],
            events_qos: 1,
            api_token: Secret::new("t0k"),
            allow_anonymous: true,
            password_file: PathBuf::new(),
            passwords: None,
            mqtts: Some("127.0.0.1:8883".parse().unwrap()),
            ws: Some("127.0.0.1:8083".parse().unwrap()),
            wss: Some("[::1]:8084".parse().unwrap()),
            tls_cert_file: "/etc/skein/server.pem".into(),
            tls_key_file: "/etc/skein/server.key".into(),
            tls_client_ca_file: "/etc/skein/ca.pem".into(),
            tls_client_cert: ClientCertMode::Required,
            tls_handshake_timeout_ms: 3000,
            tls_reload_interval_ms: 500,
            use_identity_as_username: true,
            use_identity_as_client_id: true,
            certificate_auto_activate: false,
            ..Config::default()
        }
    );
    assert_eq!(config.connect_timeout(), Duration::from_millis(2500));
    assert_eq!(config.connect_commit_timeout(), Duration::from_millis(1500));
    assert_eq!(config.shutdown_timeout(), Duration::ZERO);
}

/// Also proves each environment variable lands in its own field.
#[test]
fn env_sets_everything() {
    let passwords = toml_file("u:plain:p\n");
    let acl = toml_file("topic read a/#\n");
    let key = toml_file(EC_PUBLIC_KEY);
    let env = [
        ("SKEIN_ACL_FILE", path_of(&acl)),
        ("SKEIN_ACL_POLL_MS", "26"),
        ("SKEIN_AUTH_HTTP_URL", "http://auth:27/x"),
        ("SKEIN_AUTH_HTTP_TIMEOUT_MS", "28"),
        ("SKEIN_AUTH_HTTP_CACHE_MS", "29"),
        ("SKEIN_AUTH_HTTP_CONCURRENCY", "30"),
        ("SKEIN_AUTH_HTTP_ON_ERROR", "allow"),
        ("SKEIN_AUTH_HTTP_ACL_URL", "http://authz:31/y"),
        ("SKEIN_AUTH_HTTP_ACL_TIMEOUT_MS", "32"),
        ("SKEIN_AUTH_HTTP_ACL_CACHE_MS", "33"),
        ("SKEIN_AUTH_HTTP_ACL_CONCURRENCY", "34"),
        ("SKEIN_AUTH_HTTP_ACL_ON_ERROR", "ignore"),
        ("SKEIN_JWT_SECRET", "jwt-s3cret"),
        ("SKEIN_JWT_PUBLIC_KEY_FILE", path_of(&key)),
        ("SKEIN_NODE_ID", "9"),
        ("SKEIN_NODE_ID_FROM_HOSTNAME", "false"),
        ("SKEIN_NODE_NAME", "env-node"),
        ("SKEIN_DATA_DIR", "/data"),
        ("SKEIN_STORAGE_MIN_FREE_BYTES", "2.5%"),
        ("SKEIN_MQTT", "10.0.0.1:1883"),
        ("SKEIN_HTTP", "10.0.0.1:8081"),
        ("SKEIN_HTTP_MAX_CONNECTIONS", "21"),
        ("SKEIN_HTTP_HEADER_TIMEOUT_MS", "22"),
        ("SKEIN_HTTP_IDLE_TIMEOUT_MS", "23"),
        ("SKEIN_HTTP_BODY_TIMEOUT_MS", "24"),
        ("SKEIN_HTTP_MAX_BODY_BYTES", "25"),
        ("SKEIN_ADVERTISE_ADDR", "10.0.0.1:1883"),
        ("SKEIN_GRPC", "10.0.0.1:7072"),
        ("SKEIN_GRPC_ADVERTISE", "node-9:7072"),
        ("SKEIN_PEERS", "9@node-9:7072"),
        ("SKEIN_JOIN", "node-1:7070"),
        ("SKEIN_RAFT_HEARTBEAT_MS", "200"),
        ("SKEIN_RAFT_ELECTION_TIMEOUT_MS", "900"),
        ("SKEIN_NODE_DOWN_AFTER_MS", "5000"),
        ("SKEIN_FORWARD_QUEUE_MESSAGES", "6000"),
        ("SKEIN_MAX_CONNECTIONS", "2"),
        ("SKEIN_MAX_PACKET_SIZE", "16"),
        ("SKEIN_MAX_INFLIGHT", "3"),
        ("SKEIN_MAX_QUEUED_MESSAGES", "4"),
        ("SKEIN_MAX_SUBSCRIPTIONS_PER_SESSION", "5"),
        ("SKEIN_MAX_KEEPALIVE", "60"),
        ("SKEIN_CONNECT_TIMEOUT_MS", "5"),
        ("SKEIN_CONNECT_COMMIT_TIMEOUT_MS", "6"),
        ("SKEIN_PARK_IDLE_MS", "9"),
        ("SKEIN_WORKER_THREADS", "10"),
        ("SKEIN_MAX_CLIENT_ID_LEN", "6"),
        ("SKEIN_MAX_TOPIC_ALIAS", "7"),
        ("SKEIN_MAX_SESSION_EXPIRY_INTERVAL", "8"),
        ("SKEIN_RETAIN_AVAILABLE", "0"),
        ("SKEIN_SHUTDOWN_TIMEOUT_MS", "11"),
        ("SKEIN_LOG", "debug"),
        ("SKEIN_WEBHOOK_URLS", "http://a/1,http://b:81/2"),
        (
            "SKEIN_WEBHOOK_RULES",
            r#"[{"action": "on_message_publish", "topic": "x/#"}]"#,
        ),
        ("SKEIN_WEBHOOK_TIMEOUT_MS", "12"),
        ("SKEIN_WEBHOOK_MAX_RETRIES", "13"),
        ("SKEIN_WEBHOOK_CONCURRENCY", "14"),
        ("SKEIN_WEBHOOK_QUEUE_CAPACITY", "15"),
        ("SKEIN_STREAM_ENABLED", "false"),
        ("SKEIN_STREAM_KINDS", "client.connected"),
        ("SKEIN_STREAM_RETENTION_SECS", "16"),
        ("SKEIN_STREAM_MAX_ENTRIES", "17"),
        ("SKEIN_REDIS_URL", "redis://h:18/1"),
        ("SKEIN_REDIS_STREAM_PREFIX", "p19"),
        ("SKEIN_REDIS_STREAM_MAXLEN", "20"),
        ("SKEIN_EVENTS_DOLLAR_EVENTS", "0"),
        ("SKEIN_EVENTS_DOLLAR_EVENTS_KINDS", "client.disconnected"),
        ("SKEIN_EVENTS_DOLLAR_EVENT", "1"),
        ("SKEIN_EVENTS_DOLLAR_EVENT_KINDS", "client.ping,"),
        ("SKEIN_EVENTS_PRESENCE_TOPIC", "p/{clientid}"),
        ("SKEIN_EVENTS_PRESENCE_KINDS", "client.disconnected"),
        ("SKEIN_EVENTS_PRESENCE_RETAIN", "false"),
        ("SKEIN_EVENTS_QUEUE_CAPACITY", "12"),
        ("SKEIN_EVENTS_SUBSCRIBE_USERNAMES", " ops , ,dev"),
        ("SKEIN_EVENTS_QOS", "2"),
        ("SKEIN_API_TOKEN", " s3cret\n"),
        ("SKEIN_ALLOW_ANONYMOUS", "false"),
        ("SKEIN_PASSWORD_FILE", path_of(&passwords)),
        ("SKEIN_MQTTS", "10.0.0.1:8883"),
        ("SKEIN_WS", ""),
        ("SKEIN_WSS", "10.0.0.1:8084"),
        ("SKEIN_TLS_CERT_FILE", "/c.pem"),
        ("SKEIN_TLS_KEY_FILE", "/k.pem"),
        ("SKEIN_TLS_CLIENT_CA_FILE", ""),
        ("SKEIN_TLS_CLIENT_CERT", "none"),
        ("SKEIN_TLS_HANDSHAKE_TIMEOUT_MS", "26"),
        ("SKEIN_TLS_RELOAD_INTERVAL_MS", "270"),
        ("SKEIN_USE_IDENTITY_AS_USERNAME", "1"),
        ("SKEIN_USE_IDENTITY_AS_CLIENT_ID", "0"),
        ("SKEIN_CERTIFICATE_AUTO_ACTIVATE", "false"),
    ];
    assert_eq!(env.len(), SETTINGS.len());
    assert_eq!(
        load(&[], &env).unwrap(),
        Config {
            node_id: 9,
            // true with node_id set is refused (see node_id_from_hostname_*).
            node_id_from_hostname: false,
            node_name: "env-node".into(),
            data_dir: "/data".into(),
            storage_min_free_bytes: MinFree::Percent { hundredths: 250 },
            mqtt: "10.0.0.1:1883".parse().unwrap(),
            http: "10.0.0.1:8081".parse().unwrap(),
            http_max_connections: 21,
            http_header_timeout_ms: 22,
            http_idle_timeout_ms: 23,
            http_body_timeout_ms: 24,
            http_max_body_bytes: 25,
            advertise_addr: "10.0.0.1:1883".into(),
            grpc: "10.0.0.1:7072".parse().unwrap(),
            grpc_advertise: "node-9:7072".into(),
            peers: "9@node-9:7072".into(),
            join: "node-1:7070".into(),
            raft_heartbeat_ms: 200,
            raft_election_timeout_ms: 900,
            node_down_after_ms: 5000,
            forward_queue_messages: 6000,
            max_connections: 2,
            max_packet_size: 16,
            max_inflight: 3,
            max_queued_messages: 4,
            max_subscriptions_per_session: 5,
            max_keepalive: 60,
            connect_timeout_ms: 5,
            connect_commit_timeout_ms: 6,
            park_idle_ms: 9,
            worker_threads: 10,
            max_client_id_len: 6,
            max_topic_alias: 7,
            max_session_expiry_interval: 8,
            retain_available: false,
            shutdown_timeout_ms: 11,
            log: "debug".into(),
            webhook_urls: "http://a/1,http://b:81/2".into(),
            webhook_rules: r#"[{"action": "on_message_publish", "topic": "x/#"}]"#.into(),
            webhook_timeout_ms: 12,
            webhook_max_retries: 13,
            webhook_concurrency: 14,
            webhook_queue_capacity: 15,
            stream_enabled: false,
            stream_kinds: KindSet::of(&[EventKind::ClientConnected]),
            stream_retention_secs: 16,
            stream_max_entries: 17,
            redis_url: "redis://h:18/1".into(),
            redis_stream_prefix: "p19".into(),
            redis_stream_maxlen: 20,
            events_dollar_events: false,
            events_dollar_events_kinds: KindSet::of(&[EventKind::ClientDisconnected]),
            events_dollar_event: true,
            events_dollar_event_kinds: KindSet::of(&[EventKind::ClientPing]),
            events_presence_topic: "p/{clientid}".into(),
            events_presence_kinds: KindSet::of(&[EventKind::ClientDisconnected]),
            events_presence_retain: false,
            events_queue_capacity: 12,
            events_subscribe_usernames: vec!["ops".into(), "dev".into()],
            events_qos: 2,
            api_token: Secret::new("s3cret"),
            allow_anonymous: false,
            password_file: passwords.path().to_path_buf(),
            passwords: Some(Arc::new(Passwords::parse("u:plain:p\n").unwrap())),
            mqtts: Some("10.0.0.1:8883".parse().unwrap()),
            ws: None,
            wss: Some("10.0.0.1:8084".parse().unwrap()),
            tls_cert_file: "/c.pem".into(),
            tls_key_file: "/k.pem".into(),
            tls_client_ca_file: PathBuf::new(),
            tls_client_cert: ClientCertMode::None,
            tls_handshake_timeout_ms: 26,
            tls_reload_interval_ms: 270,
            use_identity_as_username: true,
            use_identity_as_client_id: false,
            certificate_auto_activate: false,
            acl_file: acl.path().to_path_buf(),
            acl: Some(Arc::new(
                crate::acl::AclRules::parse("topic read a/#\n").unwrap()
            )),
            acl_poll_ms: 26,
            auth_http_url: "http://auth:27/x".into(),
            auth_http_timeout_ms: 28,
            auth_http_cache_ms: 29,
            auth_http_concurrency: 30,
            auth_http_on_error: "allow".into(),
            auth_http_acl_url: "http://authz:31/y".into(),
            auth_http_acl_timeout_ms: 32,
            auth_http_acl_cache_ms: 33,
            auth_http_acl_concurrency: 34,
            auth_http_acl_on_error: "ignore".into(),
            jwt_secret: Secret::new("jwt-s3cret"),
            jwt_public_key_file: key.path().to_path_buf(),
            jwt: crate::jwt::JwtVerifier::new("jwt-s3cret", Some(EC_PUBLIC_KEY.as_bytes()))
                .unwrap()
                .map(Arc::new),
        }
    );
}

/// A P-256 public key (its private key was never kept).
const EC_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEOUi7OkJdeY7jGQunugjqGkufPEPe
x/GF700XlMFdghGoOJwrxRpVHyo0Ri/UUYd6LeStP2Oomp3OKgGsx+fYhQ==
-----END PUBLIC KEY-----
";

#[test]
fn a_bad_acl_file_names_the_line_and_jwt_keys_are_checked() {
    let bad = toml_file("topic read a\nuser\n");
    let message = error(&[], &[("SKEIN_ACL_FILE", path_of(&bad))], "acl_file");
    assert!(message.contains("line 2: user without a name"), "{message}");
    let bad = toml_file("not a key");
    let message = error(
        &[],
        &[("SKEIN_JWT_PUBLIC_KEY_FILE", path_of(&bad))],
        "jwt_public_key_file",
    );
    assert!(
        message.contains("not a PEM RSA or EC public key"),
        "{message}"
    );
    // Anonymous clients may be refused when a token or the HTTP authenticator vouches.
    let config = load(
        &[],
        &[
            ("SKEIN_ALLOW_ANONYMOUS", "false"),
            ("SKEIN_JWT_SECRET", "s"),
        ],
    )
    .unwrap();
    assert!(config.jwt.is_some() && !config.allow_anonymous);
}

#[test]
fn precedence_flag_over_env_over_file() {
    let file = toml_file("max_keepalive = 100\nmqtt = \"127.0.0.1:1000\"\nnode_id = 3\n");
    let path = path_of(&file);

    let config = load(&["--config", path], &[]).unwrap();
    assert_eq!((config.max_keepalive, config.node_id), (100, 3));

    let env = [
        ("SKEIN_MAX_KEEPALIVE", "60"),
        ("SKEIN_MQTT", "127.0.0.1:2000"),
    ];
    let config = load(&["--config", path], &env).unwrap();
    assert_eq!(config.max_keepalive, 60);
    assert_eq!(config.mqtt, "127.0.0.1:2000".parse().unwrap());
    assert_eq!(config.node_id, 3, "untouched file values survive");

    let config = load(&["--config", path, "--mqtt", "127.0.0.1:3000"], &env).unwrap();
    assert_eq!(config.mqtt, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(config.max_keepalive, 60);
}

#[test]
fn flags() {
    let config = load(
        &[
            "--node-id=5",
            "--node-name",
            "n",
            "--data-dir",
            "/tmp/x",
            "--mqtt",
            "127.0.0.1:1",
            "--http",
            "127.0.0.1:2",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(config.node_id, 5);
    assert_eq!(config.node_name, "n");
    assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(config.mqtt, "127.0.0.1:1".parse().unwrap());
    assert_eq!(config.http, "127.0.0.1:2".parse().unwrap());
}

#[test]
fn node_name_follows_resolved_node_id() {
    assert_eq!(
        load(&["--node-id", "42"], &[]).unwrap().node_name,
        "skein-42"
    );
    let env = [("SKEIN_NODE_ID", "8")];
    assert_eq!(load(&[], &env).unwrap().node_name, "skein-8");
    let env = [("SKEIN_NODE_ID", "8"), ("SKEIN_NODE_NAME", "mine")];
    assert_eq!(load(&["--node-id", "42"], &env).unwrap().node_name, "mine");
}

#[test]
fn config_path_from_env() {
    let file = toml_file("max_inflight = 5\n");
    let other = toml_file("max_inflight = 6\n");
    let env = [(CONFIG_ENV, path_of(&file))];
    assert_eq!(load(&[], &env).unwrap().max_inflight, 5);
    let config = load(&["--config", path_of(&other)], &env).unwrap();
    assert_eq!(config.max_inflight, 6, "--config beats SKEIN_CONFIG");
}

#[test]
fn unrelated_env_ignored() {
    let env = [
        ("SKEIN_NOT_A_SETTING", "x"),
        ("MAX_KEEPALIVE", "x"),
        ("skein_max_keepalive", "x"),
        ("PATH", "/bin"),
    ];
    assert_eq!(load(&[], &env).unwrap(), Config::default());
}

#[test]
fn booleans() {
    for (text, expected) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("false", false),
        ("False", false),
        ("0", false),
    ] {
        let config = load(&[], &[("SKEIN_RETAIN_AVAILABLE", text)]).unwrap();
        assert_eq!(config.retain_available, expected, "{text}");
    }
    let message = error(
        &[],
        &[("SKEIN_RETAIN_AVAILABLE", "yes")],
        "retain_available",
    );
    assert!(
        message.ends_with("from SKEIN_RETAIN_AVAILABLE"),
        "{message}"
    );

    for (toml, expected) in [("true", true), ("false", false), ("0", false), ("1", true)] {
        let file = toml_file(&format!("retain_available = {toml}\n"));
        let config = load(&["--config", path_of(&file)], &[]).unwrap();
        assert_eq!(config.retain_available, expected, "{toml}");
    }
    let file = toml_file("retain_available = \"true\"\n");
    error(&["--config", path_of(&file)], &[], "retain_available");
}

#[test]
fn bad_env_value() {
    let message = error(&[], &[("SKEIN_MAX_KEEPALIVE", "abc")], "max_keepalive");
    assert_eq!(
        message,
        "config error: max_keepalive: invalid value \"abc\" (expected an integer \
         1..=65535) from SKEIN_MAX_KEEPALIVE"
    );
    error(&[], &[("SKEIN_MQTT", "localhost:1883")], "mqtt");
    error(&[], &[("SKEIN_NODE_NAME", "")], "node_name");
    error(&[], &[("SKEIN_LOG", "foo=notalevel")], "log");
    let message = error(&[], &[("SKEIN_NODE_ID", "1\n2")], "node_id");
    assert!(message.contains(r#""1\n2""#), "{message}");
}

#[test]
fn out_of_range() {
    let message = error(&[], &[("SKEIN_MAX_PACKET_SIZE", "15")], "max_packet_size");
    assert!(
        message.contains("expected an integer 16..=268435455"),
        "{message}"
    );
    error(
        &[],
        &[("SKEIN_MAX_PACKET_SIZE", "268435456")],
        "max_packet_size",
    );
    error(&[], &[("SKEIN_MAX_INFLIGHT", "0")], "max_inflight");
    error(&[], &[("SKEIN_MAX_INFLIGHT", "65536")], "max_inflight");
    error(&[], &[("SKEIN_MAX_KEEPALIVE", "0")], "max_keepalive");
    error(&[], &[("SKEIN_MAX_CONNECTIONS", "0")], "max_connections");
    error(
        &[],
        &[("SKEIN_MAX_QUEUED_MESSAGES", "0")],
        "max_queued_messages",
    );
    error(
        &[],
        &[("SKEIN_MAX_CLIENT_ID_LEN", "65536")],
        "max_client_id_len",
    );
    error(
        &[],
        &[("SKEIN_CONNECT_TIMEOUT_MS", "0")],
        "connect_timeout_ms",
    );
    error(
        &[],
        &[("SKEIN_CONNECT_COMMIT_TIMEOUT_MS", "0")],
        "connect_commit_timeout_ms",
    );
    error(&[], &[("SKEIN_NODE_ID", "-1")], "node_id");
    error(
        &[],
        &[("SKEIN_NODE_DOWN_AFTER_MS", "900")],
        "node_down_after_ms",
    );

    let file = toml_file("max_keepalive = 70000\n");
    let message = error(&["--config", path_of(&file)], &[], "max_keepalive");
    let expected = format!(
        "config error: max_keepalive: invalid value 70000 (expected an integer 1..=65535) \
         from {}",
        file.path().display()
    );
    assert_eq!(message, expected);
    let file = toml_file("max_session_expiry_interval = -1\n");
    error(
        &["--config", path_of(&file)],
        &[],
        "max_session_expiry_interval",
    );
}

#[test]
fn event_settings() {
    let config = load(&[], &[]).unwrap();
    assert!(config.events_dollar_events && !config.events_dollar_event);
    assert_eq!(
        config.events_dollar_events_kinds,
        dollar_events_slash_topics::default_kinds()
    );
    assert_eq!(
        config.events_dollar_event_kinds,
        dollar_event_dot_topics::renders()
    );
    assert!(config.events_presence_topic.is_empty());
    assert!(config.events_presence_retain);
    assert_eq!(config.events_queue_capacity, 10_000);
    assert!(config.events_subscribe_usernames.is_empty());
    let config = load(&[], &[("SKEIN_EVENTS_DOLLAR_EVENTS_KINDS", "")]).unwrap();
    assert_eq!(config.events_dollar_events_kinds, KindSet::NONE);

    let message = error(
        &[],
        &[(
            "SKEIN_EVENTS_DOLLAR_EVENTS_KINDS",
            "client.connected,client.bogus",
        )],
        "events_dollar_events_kinds",
    );
    assert!(
        message.contains("client.connected,client.disconnected"),
        "{message}"
    );
    // A real kind the dialect does not render is refused too.
    error(
        &[],
        &[("SKEIN_EVENTS_DOLLAR_EVENTS_KINDS", "message.publish")],
        "events_dollar_events_kinds",
    );
    error(
        &[],
        &[("SKEIN_EVENTS_DOLLAR_EVENT_KINDS", "client.connected")],
        "events_dollar_event_kinds",
    );
    for bad in ["a/+/{clientid}", "a/{nope}", "a/{clientid", "#"] {
        error(
            &[],
            &[("SKEIN_EVENTS_PRESENCE_TOPIC", bad)],
            "events_presence_topic",
        );
    }
    error(
        &[],
        &[("SKEIN_EVENTS_QUEUE_CAPACITY", "0")],
        "events_queue_capacity",
    );
    error(&[], &[("SKEIN_EVENTS_QOS", "3")], "events_qos");
    let file = toml_file("events_dollar_event_kinds = [\"client.ping\", 1]\n");
    error(
        &["--config", path_of(&file)],
        &[],
        "events_dollar_event_kinds",
    );
    let file = toml_file("events_subscribe_usernames = [\"a\", 2]\n");
    error(
        &["--config", path_of(&file)],
        &[],
        "events_subscribe_usernames",
    );
}

#[test]
fn the_password_file_is_read_at_load_and_checked() {
    let config = load(&[], &[]).unwrap();
    assert!(config.allow_anonymous);
    assert!(config.password_file.as_os_str().is_empty() && config.passwords.is_none());

    let file = toml_file("# users\nu:plain:p\n");
    let config = load(&[], &[("SKEIN_PASSWORD_FILE", path_of(&file))]).unwrap();
    let passwords = config.passwords.expect("loaded");
    assert!(passwords.verify("u", b"p"));
    assert!(config.allow_anonymous);

    let message = error(
        &[],
        &[("SKEIN_ALLOW_ANONYMOUS", "false")],
        "allow_anonymous",
    );
    assert!(message.contains("password_file"), "{message}");
    assert!(message.ends_with("from SKEIN_ALLOW_ANONYMOUS"), "{message}");
    // An empty path is "none", from any layer.
    let env = [("SKEIN_ALLOW_ANONYMOUS", "0"), ("SKEIN_PASSWORD_FILE", " ")];
    error(&[], &env, "allow_anonymous");

    let bad = toml_file("u:plain:p\nv:hunter2\n");
    let message = error(
        &[],
        &[("SKEIN_PASSWORD_FILE", path_of(&bad))],
        "password_file",
    );
    let expected = format!(
        "config error: password_file: {}: line 2: expected username:sha256:<hash>:<salt> \
         or username:plain:<password> (from SKEIN_PASSWORD_FILE)",
        bad.path().display()
    );
    assert_eq!(message, expected);
    assert!(!message.contains("hunter2"));

    let conf = toml_file(&format!("password_file = {:?}\n", path_of(&bad)));
    let message = error(&["--config", path_of(&conf)], &[], "password_file");
    assert!(message.contains("line 2"), "{message}");
    assert!(message.ends_with(&format!("(from {})", conf.path().display())));

    let message = error(
        &[],
        &[("SKEIN_PASSWORD_FILE", "/nonexistent/passwd")],
        "password_file",
    );
    assert!(
        message.contains("/nonexistent/passwd: cannot read"),
        "{message}"
    );
}

#[test]
fn bad_flag_value() {
    let message = error(&["--mqtt", "nope"], &[], "mqtt");
    assert!(message.ends_with("from --mqtt"), "{message}");
    let message = error(&["--node-id", "x"], &[], "node_id");
    assert!(message.ends_with("from --node-id"), "{message}");
}

#[test]
fn unknown_toml_key() {
    let file = toml_file("max_keepalive = 10\nmax_keeplive = 10\n");
    let message = error(&["--config", path_of(&file)], &[], "max_keeplive");
    assert!(message.contains("unknown setting"), "{message}");
    // A quoted key can hold a newline; the message must still be one line.
    let file = toml_file("\"a\\nb\" = 1\n");
    error(&["--config", path_of(&file)], &[], "a\\nb");
    let file = toml_file("[mqtt]\nport = 1\n");
    let message = error(&["--config", path_of(&file)], &[], "mqtt");
    assert!(message.contains("(a table)"), "{message}");
}

#[test]
fn bad_type_in_toml() {
    let file = toml_file("max_inflight = \"10\"\n");
    let message = error(&["--config", path_of(&file)], &[], "max_inflight");
    assert!(message.contains(r#"invalid value "10""#), "{message}");
    let file = toml_file("max_inflight = 1.5\n");
    error(&["--config", path_of(&file)], &[], "max_inflight");
    let file = toml_file("mqtt = 1883\n");
    error(&["--config", path_of(&file)], &[], "mqtt");
    let file = toml_file("log = [\"info\"]\n");
    error(&["--config", path_of(&file)], &[], "log");
}

#[test]
fn storage_min_free_bytes_is_a_byte_count_or_a_percentage() {
    assert_eq!(
        load(&[], &[]).unwrap().storage_min_free_bytes,
        MinFree::Bytes(64 * 1024 * 1024)
    );
    let file = toml_file("storage_min_free_bytes = \"5%\"\n");
    let config = load(&["--config", path_of(&file)], &[]).unwrap();
    assert_eq!(
        config.storage_min_free_bytes,
        MinFree::Percent { hundredths: 500 }
    );
    let file = toml_file("storage_min_free_bytes = 0\n");
    let config = load(&["--config", path_of(&file)], &[]).unwrap();
    assert_eq!(config.storage_min_free_bytes, MinFree::Bytes(0));
    for bad in ["-1", "100%", "64MiB", "5%%", ""] {
        let message = error(
            &[],
            &[("SKEIN_STORAGE_MIN_FREE_BYTES", bad)],
            "storage_min_free_bytes",
        );
        assert!(message.contains("percentage"), "{message}");
    }
    let file = toml_file("storage_min_free_bytes = -5\n");
    error(&["--config", path_of(&file)], &[], "storage_min_free_bytes");
}

#[test]
fn bad_file() {
    let message = error(&["--config", "/nonexistent/skein.toml"], &[], "config");
    assert!(message.contains("/nonexistent/skein.toml"), "{message}");

    let file = toml_file("max_inflight = 1\nmax_keepalive = = 3\n");
    let message = error(&["--config", path_of(&file)], &[], "config");
    assert!(message.contains("invalid TOML"), "{message}");
    assert!(message.contains("line 2"), "{message}");

    let file = toml_file("max_inflight = 1\nmax_inflight = 2\n");
    error(&["--config", path_of(&file)], &[], "config");
}

#[test]
fn file_errors_win_over_later_layers() {
    // A broken file is reported even when env would override the bad key: the file is
    // still wrong and will bite as soon as the env var goes away.
    let file = toml_file("max_inflight = 0\n");
    let env = [("SKEIN_MAX_INFLIGHT", "5")];
    error(&["--config", path_of(&file)], &env, "max_inflight");
}

#[test]
fn help_version_and_usage_errors() {
    let err = load(&["--help"], &[("SKEIN_MAX_KEEPALIVE", "bad")]).unwrap_err();
    let ConfigError::Clap(clap_err) = &err else {
        panic!("expected clap error, got {err}");
    };
    assert_eq!(clap_err.kind(), clap::error::ErrorKind::DisplayHelp);
    assert_eq!(err.exit_code(), 0);
    let help = clap_err.to_string();
    for needle in [
        "--config",
        "--node-id",
        "--data-dir",
        "--mqtt",
        "--http",
        "SKEIN_",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
    for setting in SETTINGS {
        assert!(
            help.contains(&env_var_name(setting.name)),
            "{}",
            setting.name
        );
    }

    let err = load(&["--version"], &[]).unwrap_err();
    assert_eq!(err.exit_code(), 0);
    let err = load(&["--bogus"], &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Clap(_)));
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn every_flag_is_a_setting() {
    Cli::command().debug_assert();
    for arg in Cli::command().get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "config" | "help" | "version") {
            continue;
        }
        assert!(find_setting(id).is_some(), "flag {id} has no setting");
        let cli =
            Cli::try_parse_from(["skein", &format!("--{}", id.replace('_', "-")), "v"]).unwrap();
        assert_eq!(cli.flag(id), Some("v"), "Cli::flag doesn't map {id}");
    }
}

#[test]
fn defaults_render_in_help() {
    for setting in SETTINGS {
        assert!(!(setting.default)().is_empty(), "{}", setting.name);
    }
    assert_eq!(
        flag_help("data_dir"),
        "Directory for persistent state [default: ./data] [env: SKEIN_DATA_DIR]"
    );
}

#[test]
fn webhook_stream_and_redis_values_are_checked() {
    let config = load(&[], &[]).unwrap();
    assert_eq!(config.webhook_urls, "");
    assert_eq!(config.webhook_rules, "");
    assert_eq!(config.webhook_timeout_ms, 5000);
    assert_eq!(config.webhook_max_retries, 3);
    assert_eq!(config.webhook_concurrency, 8);
    assert_eq!(config.webhook_queue_capacity, 10_000);
    assert!(config.stream_enabled);
    assert_eq!(config.stream_retention_secs, 86_400);
    assert_eq!(config.stream_max_entries, 1_000_000);
    assert_eq!(config.redis_url, "");
    assert_eq!(config.redis_stream_prefix, "skein");

    let message = error(
        &[],
        &[("SKEIN_WEBHOOK_URLS", "https://h/x")],
        "webhook_urls",
    );
    assert!(message.contains("http:// URLs"), "{message}");
    error(
        &[],
        &[("SKEIN_WEBHOOK_URLS", "http://a/1,ftp://b")],
        "webhook_urls",
    );
    error(
        &[],
        &[("SKEIN_WEBHOOK_RULES", "[{\"action\": \"on_nope\"}]")],
        "webhook_rules",
    );
    error(&[], &[("SKEIN_WEBHOOK_RULES", "not json")], "webhook_rules");
    error(
        &[],
        &[("SKEIN_WEBHOOK_CONCURRENCY", "0")],
        "webhook_concurrency",
    );
    error(
        &[],
        &[("SKEIN_WEBHOOK_TIMEOUT_MS", "0")],
        "webhook_timeout_ms",
    );
    error(&[], &[("SKEIN_REDIS_URL", "http://h")], "redis_url");
    error(&[], &[("SKEIN_REDIS_URL", "rediss://h")], "redis_url");
    error(
        &[],
        &[("SKEIN_REDIS_STREAM_PREFIX", "")],
        "redis_stream_prefix",
    );
    let config = load(&[], &[("SKEIN_WEBHOOK_URLS", " "), ("SKEIN_REDIS_URL", "")]).unwrap();
    assert_eq!(
        (config.webhook_urls.as_str(), config.redis_url.as_str()),
        ("", "")
    );
}

#[test]
fn cluster_settings_that_contradict_each_other_are_refused() {
    let e = load(
        &[],
        &[
            ("SKEIN_RAFT_ELECTION_TIMEOUT_MS", "300"),
            ("SKEIN_RAFT_HEARTBEAT_MS", "200"),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("raft_election_timeout_ms") && e.contains("twice"),
        "{e}"
    );
    let e = load(&["--node-id", "4", "--peers", "1@a:7070,2@b:7070"], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("peers") && e.contains("this node's id 4"), "{e}");
    let e = load(&["--peers", "1@a"], &[]).unwrap_err().to_string();
    assert!(e.contains("--peers") && e.contains("ID@HOST:PORT"), "{e}");
    let ok = load(
        &["--grpc", "127.0.0.1:0", "--peers", "1@127.0.0.1:7070"],
        &[],
    )
    .unwrap();
    assert_eq!(ok.grpc, "127.0.0.1:0".parse().unwrap());
}

#[test]
fn node_id_from_hostname_takes_the_pod_ordinal() {
    let on = ("SKEIN_NODE_ID_FROM_HOSTNAME", "true");
    let config = load(&[], &[on, ("HOSTNAME", "skein-2")]).unwrap();
    assert_eq!((config.node_id, config.node_name.as_str()), (3, "skein-2"));
    // A release name with dashes, a fully qualified name, a name given as well.
    let host = (
        "HOSTNAME",
        "my-skein-0.my-skein-headless.mqtt.svc.cluster.local",
    );
    let config = load(&[], &[on, host]).unwrap();
    assert_eq!(
        (config.node_id, config.node_name.as_str()),
        (1, "my-skein-0")
    );
    let config = load(&["--node-name", "n"], &[on, ("HOSTNAME", "skein-11")]).unwrap();
    assert_eq!((config.node_id, config.node_name.as_str()), (12, "n"));
    // The id enters the peers check: pod 3 of a 3-pod peers list joins instead.
    let peers = ("SKEIN_PEERS", "1@a:7070,2@b:7070,3@c:7070");
    let e = error(&[], &[on, peers, ("HOSTNAME", "skein-3")], "peers");
    assert!(e.contains("this node's id 4"), "{e}");
    let joins = ("SKEIN_JOIN", "a:7070");
    let config = load(&[], &[on, peers, joins, ("HOSTNAME", "skein-3")]).unwrap();
    assert_eq!(config.node_id, 4);
    // Off by default: HOSTNAME alone changes nothing.
    assert_eq!(
        load(&[], &[("HOSTNAME", "skein-2")]).unwrap(),
        Config::default()
    );
}

#[test]
fn node_id_from_hostname_refuses_names_without_an_ordinal_and_a_second_id() {
    let on = ("SKEIN_NODE_ID_FROM_HOSTNAME", "true");
    for host in [
        "skein",
        "skein-",
        "skein-x1",
        "skein-18446744073709551615",
        "a-1b",
    ] {
        let e = error(&[], &[on, ("HOSTNAME", host)], "node_id_from_hostname");
        assert!(
            e.contains("-ORDINAL") && e.contains("SKEIN_NODE_ID_FROM_HOSTNAME"),
            "{host}: {e}"
        );
    }
    let e = error(
        &["--node-id", "2"],
        &[on, ("HOSTNAME", "skein-1")],
        "node_id",
    );
    assert!(
        e.contains("node_id_from_hostname") && e.contains("--node-id"),
        "{e}"
    );
}

#[test]
fn tls_listeners_need_their_files() {
    let message = error(&["--mqtts", "0.0.0.0:8883"], &[], "tls_cert_file");
    assert!(message.contains("from --mqtts"), "{message}");
    let message = error(
        &["--wss", "0.0.0.0:8084"],
        &[("SKEIN_TLS_CERT_FILE", "/c.pem")],
        "tls_key_file",
    );
    assert!(message.contains("as wss is on"), "{message}");
    let files = [
        ("SKEIN_TLS_CERT_FILE", "/c.pem"),
        ("SKEIN_TLS_KEY_FILE", "/k.pem"),
        ("SKEIN_TLS_CLIENT_CERT", "optional"),
    ];
    let message = error(&["--mqtts", "0.0.0.0:8883"], &files, "tls_client_ca_file");
    assert!(message.contains("tls_client_cert is optional"), "{message}");
    // Without a TLS listener nothing is needed; the WebSocket listener needs no files.
    let config = load(&["--ws", "127.0.0.1:8083"], &[]).unwrap();
    assert_eq!(config.ws, Some("127.0.0.1:8083".parse().unwrap()));
    assert!(!config.tls_enabled());
    error(
        &[],
        &[("SKEIN_TLS_CLIENT_CERT", "sometimes")],
        "tls_client_cert",
    );
    error(&["--mqtts", "localhost:8883"], &[], "mqtts");
}
