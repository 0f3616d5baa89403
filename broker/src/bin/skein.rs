//! The `skein` binary: one broker node.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use skein_broker::config::{Config, ConfigError};
use skein_broker::log_writer::DropOnError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// tokio's task cells and I/O registrations in chunks of their own (see aligned_pool).
#[global_allocator]
static ALLOCATOR: skein_broker::aligned_pool::AlignedPool =
    skein_broker::aligned_pool::AlignedPool::new();

fn main() -> ExitCode {
    let config = match Config::from_process() {
        Ok(c) => c,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            say_on_stderr(&e.to_string());
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log line that cannot be written is dropped and counted, never a panic.
        .with_writer(DropOnError(std::io::stderr))
        .log_internal_errors(false)
        // Colour only on a terminal: Kubernetes and log shippers read plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // 0 leaves tokio's default: one worker per CPU the process may use (or
    // TOKIO_WORKER_THREADS).
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            say_on_stderr(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}`: the causes after the message, each once (see BrokerError).
            say_on_stderr(&format!("skein: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let mqtt = TcpListener::bind(config.mqtt)
        .await
        .with_context(|| format!("cannot listen for MQTT on {}", config.mqtt))?;
    let http = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http))?;
    let grpc = TcpListener::bind(config.grpc)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc))?;
    let extra = skein_broker::ExtraListeners {
        mqtts: bind_optional(config.mqtts, "MQTT over TLS").await?,
        ws: bind_optional(config.ws, "MQTT over WebSocket").await?,
        wss: bind_optional(config.wss, "MQTT over secure WebSocket").await?,
    };
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(node_id = config.node_id, node_name = %config.node_name, data_dir = %config.data_dir.display(), workers, "starting skein");
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let listeners = skein_broker::Listeners {
        mqtt,
        http,
        grpc,
        extra,
    };
    let node = skein_broker::open(config, listeners, shutdown).await?;
    // Tests and scripts read these lines to find ports bound as 0. Printed once the node
    // can serve: a node that fails to start never claims to listen. gRPC first: a harness
    // that waits for the other two has it by then.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "grpc listening on {}", node.grpc_addr());
    // Before the mqtt line too: harnesses that wait for mqtt and http have these by then.
    for (name, addr) in node.extra_addrs()? {
        let _ = writeln!(stdout, "{name} listening on {addr}");
    }
    let _ = writeln!(stdout, "mqtt listening on {}", node.mqtt_addr()?);
    let _ = writeln!(stdout, "http listening on {}", node.http_addr()?);
    drop(stdout);
    node.serve().await?;
    Ok(())
}

async fn bind_optional(
    addr: Option<std::net::SocketAddr>,
    what: &str,
) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        None => Ok(None),
        Some(addr) => {
            Ok(Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for {what} on {addr}")
            })?))
        }
    }
}

/// Writes one line to stderr, ignoring a failure: `eprintln!` would panic (exit 101) when
/// stderr is full or closed.
fn say_on_stderr(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
