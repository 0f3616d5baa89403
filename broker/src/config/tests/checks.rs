//! Tests of what loading refuses and checks: ranges, types, unknown keys, files, settings
//! that contradict each other, help and usage.

use super::*;

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
