//! The event settings: what the dialects take from the node's configuration.
//!
//! The events sit below `config`, which needs their kinds and renderers to check and
//! default the event settings (and to list them in `--help`). So the configuration hands
//! the events their settings as this plain struct (`From<&Config>` in
//! `config/event_settings.rs`) instead of the events reading `Config`. Field names are the
//! settings' names: see `Config` for what each one means.

use super::KindSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSettings {
    pub events_dollar_events: bool,
    pub events_dollar_events_kinds: KindSet,
    pub events_dollar_event: bool,
    pub events_dollar_event_kinds: KindSet,
    pub events_presence_topic: String,
    pub events_presence_kinds: KindSet,
    pub events_presence_retain: bool,
    pub events_queue_capacity: usize,
    pub events_qos: u8,
    pub webhook_urls: String,
    pub webhook_rules: String,
    pub webhook_timeout_ms: u64,
    pub webhook_max_retries: u32,
    pub webhook_concurrency: usize,
    pub webhook_queue_capacity: usize,
    pub stream_enabled: bool,
    pub stream_kinds: KindSet,
    pub stream_retention_secs: u64,
    pub stream_max_entries: u64,
    pub redis_url: String,
    pub redis_stream_prefix: String,
    pub redis_stream_maxlen: u64,
}
