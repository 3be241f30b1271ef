//! [`PoolStatus`] and [`ServerStatus`] as serde sees them (feature `serde`): the shape of the
//! status endpoint's JSON.
//!
//! ```json
//! {"servers": [{"server": "replica 0", "role": "replica", "index": 0, "primary": false,
//!   "url": "postgres://app:***@replica-1:5432/app", "healthy": true, "ban_reason": null,
//!   "weight": 1, "lag": {"seconds": 0.0, "bytes": 0}, "probe_latency_seconds": 0.0004,
//!   "connections": {"open": 2, "idle": 1, "used": 1, "waiting": 0, "max": 16},
//!   "statements": {"total": 12, "by_reason": {"scope_replica": 12}},
//!   "failures": 0, "bans": 0}],
//!  "no_primary": null, "forged_tokens": 0, "learned_statements": 0}
//! ```

use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, SerializeStruct, Serializer};

use super::{PoolStatus, ServerStatus};
use crate::error::Role;
use crate::reason::Reason;

impl Serialize for PoolStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut pool = serializer.serialize_struct("PoolStatus", 4)?;
        pool.serialize_field("servers", &self.servers)?;
        pool.serialize_field("no_primary", &self.no_primary)?;
        pool.serialize_field("forged_tokens", &self.forged_tokens)?;
        pool.serialize_field("learned_statements", &self.learned_statements)?;
        pool.end()
    }
}

impl Serialize for ServerStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (role, index) = match self.role {
            Role::Primary => ("primary", None),
            Role::Replica(index) => ("replica", Some(index)),
            Role::Node(index) => ("node", Some(index)),
        };
        let mut server = serializer.serialize_struct("ServerStatus", 15)?;
        server.serialize_field("server", &self.role.to_string())?;
        server.serialize_field("role", role)?;
        server.serialize_field("index", &index)?;
        server.serialize_field("primary", &self.primary)?;
        server.serialize_field("url", &self.url.to_string())?;
        server.serialize_field("healthy", &self.healthy)?;
        server.serialize_field("ban_reason", &self.ban_reason)?;
        server.serialize_field("weight", &self.weight)?;
        server.serialize_field(
            "lag",
            &Lag {
                seconds: self.lag.map(seconds),
                bytes: self.lag_bytes,
            },
        )?;
        server.serialize_field("probe_latency_seconds", &self.latency.map(seconds))?;
        server.serialize_field(
            "connections",
            &Connections {
                open: self.in_use + self.idle,
                idle: self.idle,
                used: self.in_use,
                waiting: self.waiting,
                max: self.max_size,
            },
        )?;
        server.serialize_field(
            "statements",
            &Statements {
                total: self.queries_routed,
                by_reason: ByReason(&self.queries_by_reason),
            },
        )?;
        server.serialize_field("failures", &self.failures)?;
        server.serialize_field("bans", &self.bans)?;
        server.end()
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[derive(serde::Serialize)]
struct Lag {
    seconds: Option<f64>,
    bytes: Option<u64>,
}

#[derive(serde::Serialize)]
struct Connections {
    open: usize,
    idle: usize,
    used: usize,
    waiting: usize,
    max: usize,
}

#[derive(serde::Serialize)]
struct Statements<'a> {
    total: u64,
    by_reason: ByReason<'a>,
}

/// Counts by reason, as a map from each reason's metric label.
struct ByReason<'a>(&'a [(Reason, u64)]);

impl Serialize for ByReason<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (reason, count) in self.0 {
            map.serialize_entry(reason.label(), count)?;
        }
        map.end()
    }
}
