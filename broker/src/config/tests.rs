//! Tests of configuration loading: layers, every setting, one-line errors.

use super::*;
use crate::events::EventKind;
use clap::CommandFactory;
use skein_storage::MinFree;
use std::io::Write;

mod checks;

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
