//! Hands the events their settings (see `events/settings.rs` for why they don't read
//! `Config`).

use super::Config;
use crate::events::EventSettings;

impl From<&Config> for EventSettings {
    fn from(c: &Config) -> EventSettings {
        EventSettings {
            events_dollar_events: c.events_dollar_events,
            events_dollar_events_kinds: c.events_dollar_events_kinds,
            events_dollar_event: c.events_dollar_event,
            events_dollar_event_kinds: c.events_dollar_event_kinds,
            events_presence_topic: c.events_presence_topic.clone(),
            events_presence_kinds: c.events_presence_kinds,
            events_presence_retain: c.events_presence_retain,
            events_queue_capacity: c.events_queue_capacity,
            events_qos: c.events_qos,
            webhook_urls: c.webhook_urls.clone(),
            webhook_rules: c.webhook_rules.clone(),
            webhook_timeout_ms: c.webhook_timeout_ms,
            webhook_max_retries: c.webhook_max_retries,
            webhook_concurrency: c.webhook_concurrency,
            webhook_queue_capacity: c.webhook_queue_capacity,
            stream_enabled: c.stream_enabled,
            stream_kinds: c.stream_kinds,
            stream_retention_secs: c.stream_retention_secs,
            stream_max_entries: c.stream_max_entries,
            redis_url: c.redis_url.clone(),
            redis_stream_prefix: c.redis_stream_prefix.clone(),
            redis_stream_maxlen: c.redis_stream_maxlen,
        }
    }
}
