//! The stream dialect's Redis sink: a real node XADDs connects and disconnects of real
//! clients to a real `redis-server` (Debian package `redis-server`, started here on a free
//! loopback port without persistence), read back with `redis-cli --json XRANGE`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skein_tests::clients::v3;
use skein_tests::{unique_id, Node};

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (apt-get install redis-server)");
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    /// `XRANGE key - +` as (id, [field, value, ...]).
    fn xrange(&self, key: &str) -> Vec<(String, Vec<String>)> {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &self.port.to_string(),
                "--json",
                "XRANGE",
                key,
                "-",
                "+",
            ])
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let fields = e[1]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_owned())
                    .collect();
                (e[0].as_str().unwrap().to_owned(), fields)
            })
            .collect()
    }

    fn wait_for(&self, key: &str, n: usize) -> Vec<(String, Vec<String>)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entries = self.xrange(key);
            if entries.len() >= n || Instant::now() > deadline {
                return entries;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn connects_and_disconnects_are_xadded_to_prefix_mqtt() {
    let redis = Redis::start();
    let node = Node::builder()
        .env(
            "SKEIN_REDIS_URL",
            format!("redis://127.0.0.1:{}", redis.port),
        )
        .env("SKEIN_REDIS_STREAM_PREFIX", "supermq")
        .env("SKEIN_NODE_NAME", "mqtt-adapter-1")
        .start();
    let id = unique_id("rd");
    let before_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let c = v3::Client::connect(node.mqtt_addr(), &id).await;
    c.disconnect().await;
    let entries = redis.wait_for("supermq.mqtt", 2);
    assert_eq!(entries.len(), 2, "{entries:?}");
    for ((redis_id, fields), event_type) in entries.iter().zip(["connect", "disconnect"]) {
        assert!(redis_id.contains('-'), "a Redis stream id: {redis_id}");
        assert_eq!(fields.len(), 8, "{fields:?}");
        assert_eq!(
            [&fields[0], &fields[2], &fields[4], &fields[6]],
            ["client_id", "event_type", "instance", "occurred_at"]
        );
        assert_eq!(fields[1], id);
        assert_eq!(fields[3], event_type);
        assert_eq!(fields[5], "mqtt-adapter-1");
        let at: u64 = fields[7].parse().expect("occurred_at is an integer");
        assert!(at + 1_000_000 >= before_ns, "nanoseconds: {at}");
    }
    // The default prefix is not written.
    assert!(redis.xrange("skein.mqtt").is_empty());
}
