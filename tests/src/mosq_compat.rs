//! THROWAWAY: SKEIN_TEST_AGAINST=mosquitto runs the tests against Debian's
//! mosquitto to validate the tests themselves. Not part of the final harness.
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn enabled() -> bool {
    std::env::var("SKEIN_TEST_AGAINST")
        .map(|v| v == "mosquitto")
        .unwrap_or(false)
}

pub(crate) fn spawn(
    envs: &[(String, String)],
    data_dir: &Path,
    port: u16,
) -> Result<super::node::ProcParts, String> {
    let port = if port == 0 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    } else {
        port
    };
    let mut conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_dest stderr\nlog_type all\n",
        data_dir.display()
    );
    for (k, v) in envs {
        let line = match k.as_str() {
            "SKEIN_MAX_KEEPALIVE" => format!("max_keepalive {v}"),
            "SKEIN_MAX_QUEUED_MESSAGES" => format!("max_queued_messages {v}"),
            "SKEIN_MAX_PACKET_SIZE" => format!("max_packet_size {v}"),
            "SKEIN_MAX_INFLIGHT" => format!("max_inflight_messages {v}"),
            "SKEIN_MAX_TOPIC_ALIAS" => format!("max_topic_alias {v}"),
            "SKEIN_RETAIN_AVAILABLE" => format!("retain_available {v}"),
            "SKEIN_MAX_CONNECTIONS" => format!("max_connections {v}"),
            _ => String::new(),
        };
        conf.push_str(&line);
        conf.push('\n');
    }
    let conf_path = data_dir.join("mosquitto.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stderr = Arc::new(Mutex::new(String::new()));
    {
        let err = child.stderr.take().unwrap();
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                stderr.lock().unwrap().push_str(&(l + "\n"));
            }
        });
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        if start.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            return Err(format!(
                "mosquitto did not start: {}",
                stderr.lock().unwrap()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(super::node::ProcParts {
        child,
        mqtt_addr: addr,
        http_addr: "127.0.0.1:9".parse().unwrap(),
        stderr,
    })
}
