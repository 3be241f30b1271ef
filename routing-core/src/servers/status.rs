//! What the router knows of each server now, as a value and as a table (and, with the `serde`
//! feature, as whatever a serializer makes of it).

#[cfg(feature = "serde")]
mod serialize;

use std::fmt;
use std::time::Duration;

use super::{RoutedPool, Server};
use crate::error::Role;
use crate::reason::Reason;
use crate::url::RedactedUrl;

/// A snapshot of a pool's servers, the equivalent of pgpool-II's `SHOW POOL NODES`; its
/// `Display` is a table. With the `serde` feature (on with `tower`) it implements `Serialize`,
/// in the shape the status endpoint (`web::StatusService`, feature `tower`) serves as JSON.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The primary first, then the replicas in configuration order; or, for a pool that
    /// discovers its primary, every node in the order its URL lists them.
    pub servers: Vec<ServerStatus>,
    /// Why a pool that discovers its primary has none now (a failover under way, every node a
    /// standby, a split brain); `None` when it has one, and for a pool with a fixed primary.
    pub no_primary: Option<String>,
    /// Causal tokens ignored because they claimed a WAL position the primary had not reached
    /// or a time in the future.
    pub forged_tokens: u64,
    /// Statements the pool learned to send to the primary after a replica refused them as
    /// writes.
    pub learned_statements: usize,
}

/// One server of a [`PoolStatus`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerStatus {
    /// Primary, replica `n`, or node `n` of a pool that discovers its primary.
    pub role: Role,
    /// Whether this server is the primary now.
    pub primary: bool,
    /// Its URL, password redacted.
    pub url: RedactedUrl,
    /// False while the server is banned (a replica that failed, until a probe succeeds).
    pub healthy: bool,
    /// Why it is banned.
    pub ban_reason: Option<String>,
    /// Its weight for the policies.
    pub weight: u32,
    /// Its lag behind the primary in time, from the last probe (replicas only).
    pub lag: Option<Duration>,
    /// Its lag behind the primary in bytes of WAL, from the last probe (replicas only).
    pub lag_bytes: Option<u64>,
    /// The round trip of its health probe (replicas only).
    pub latency: Option<Duration>,
    /// Connections of its pool open now, in use or idle.
    pub size: usize,
    /// Pooled connections checked out now.
    pub in_use: usize,
    /// Pooled connections open and idle.
    pub idle: usize,
    /// Tasks waiting for a pooled connection.
    pub waiting: usize,
    /// The pool's limit: `primary_max_size` for the primary, `replica_max_size` for each
    /// replica (a node of a discovering pool has the limit of the role it has now).
    pub max_size: usize,
    /// Statements sent to this server so far (attempts, including failed ones).
    pub queries_routed: u64,
    /// The same statements by the reason they were sent here, in the order of
    /// [`Reason::ALL`]; reasons that sent none are left out.
    pub queries_by_reason: Vec<(Reason, u64)>,
    /// Failures seen: failed checkouts, broken connections, failed probes.
    pub failures: u64,
    /// Times the server was taken out of rotation.
    pub bans: u64,
}

impl RoutedPool {
    /// What the router knows of each server now: health, ban reason, lag, connections, queries
    /// routed. Also refreshes the pools' connection gauges (`db.client.connection.count`,
    /// `.max`, `.pending_requests`), which the health probe otherwise refreshes every interval.
    ///
    /// ```no_run
    /// # fn show(pool: &routing_core::RoutedPool) {
    /// println!("{}", pool.status());
    /// # }
    /// ```
    pub fn status(&self) -> PoolStatus {
        let primary = self.shared.primary_node();
        for server in self.shared.servers() {
            server.refresh_metrics();
        }
        PoolStatus {
            servers: self
                .shared
                .servers()
                .map(|server| server_status(server, primary))
                .collect(),
            no_primary: self
                .shared
                .discovers()
                .then(|| self.shared.topology().missing())
                .flatten(),
            forged_tokens: self.shared.tokens().forged(),
            learned_statements: self.shared.learned().len(),
        }
    }
}

fn server_status(server: &Server, primary_node: Option<usize>) -> ServerStatus {
    let health = server.health();
    let pool = server.pool_status();
    ServerStatus {
        role: server.role(),
        primary: match server.role() {
            Role::Primary => true,
            Role::Node(index) => primary_node == Some(index),
            _ => false,
        },
        url: server.url().clone(),
        healthy: !health.is_banned(),
        ban_reason: health.ban_reason(),
        weight: server.weight(),
        lag: health.lag(),
        lag_bytes: health.lag_bytes(),
        latency: health.latency(),
        size: pool.size,
        in_use: pool.size - pool.available,
        idle: pool.available,
        waiting: pool.waiting,
        max_size: pool.max_size,
        queries_routed: health.routed(),
        queries_by_reason: Reason::ALL
            .iter()
            .map(|reason| (*reason, health.routed_for(*reason)))
            .filter(|(_, count)| *count > 0)
            .collect(),
        failures: health.failures(),
        bans: health.bans(),
    }
}

impl fmt::Display for PoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:<8} {:>6} {:>10} {:>12} {:>9} {:>9} {:>6} {:>4} {:>7} {:>9} {:>8}  url / ban reason",
            "server",
            "health",
            "weight",
            "lag",
            "lag bytes",
            "latency",
            "pool",
            "in use",
            "idle",
            "waiting",
            "queries",
            "failures"
        )?;
        for server in &self.servers {
            let millis = |d: Option<Duration>| {
                d.map_or_else(
                    || "-".to_owned(),
                    |d| format!("{:.1}ms", d.as_secs_f64() * 1e3),
                )
            };
            writeln!(
                f,
                "{:<10} {:<8} {:>6} {:>10} {:>12} {:>9} {:>9} {:>6} {:>4} {:>7} {:>9} {:>8}  {}{}",
                if server.primary && server.role != Role::Primary {
                    format!("{} (P)", server.role)
                } else {
                    server.role.to_string()
                },
                if server.healthy { "up" } else { "banned" },
                server.weight,
                millis(server.lag),
                server
                    .lag_bytes
                    .map_or_else(|| "-".to_owned(), |b| b.to_string()),
                millis(server.latency),
                format!("{}/{}", server.size, server.max_size),
                server.in_use,
                server.idle,
                server.waiting,
                server.queries_routed,
                server.failures,
                server.url,
                server
                    .ban_reason
                    .as_deref()
                    .map_or_else(String::new, |reason| format!(" ({reason})")),
            )?;
        }
        if let Some(why) = &self.no_primary {
            writeln!(f, "no primary: {why}")?;
        }
        if self.forged_tokens > 0 || self.learned_statements > 0 {
            writeln!(
                f,
                "forged causal tokens ignored: {}; statements learned for the primary: {}",
                self.forged_tokens, self.learned_statements
            )?;
        }
        Ok(())
    }
}
