//! Observing the cluster: the leader, writes, streaming replicas.

use std::time::Duration;

use super::PatroniCluster;
use super::rest::{self, Request};
use crate::poll::{self, Check};
use crate::{ClusterError, sql};

/// How long one REST request may take.
pub(super) const REST_TIMEOUT: Duration = Duration::from_secs(3);

/// What a standby streaming from the leader reports, given the leader's port.
const RECEIVER_SQL: &str = "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 'not in recovery' \
     ELSE coalesce((SELECT status || ' from port ' || sender_port FROM pg_stat_wal_receiver), \
     'no wal receiver') END";

/// Whether the leader sees a standby streaming, by application name.
const SENDER_SQL: &str = "SELECT count(*) FROM pg_stat_replication \
     WHERE application_name = $1 AND state = 'streaming'";

/// How many synchronous standbys stream from the leader.
const SYNC_SQL: &str = "SELECT count(*) FROM pg_stat_replication \
     WHERE sync_state IN ('sync', 'quorum') AND state = 'streaming'";

impl PatroniCluster {
    /// The node holding Patroni's leader lock now, as the REST API
    /// (`GET /cluster`) of the first node that answers reports it; `None`
    /// while no member holds the lock. The leader may not accept writes yet
    /// (see [`PatroniCluster::wait_for_leader`]).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Http`] when no node's REST API answers.
    pub async fn leader(&self) -> Result<Option<usize>, ClusterError> {
        let mut last_error = None;
        for node in &self.nodes {
            match Request::get(node.files.rest_port, "/cluster")
                .json(REST_TIMEOUT)
                .await
            {
                Ok(cluster) => {
                    return Ok(rest::leader_name(&cluster).and_then(|name| self.index_of(name)));
                }
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| ClusterError::Http {
            request: "GET /cluster".to_owned(),
            detail: "the cluster has no nodes".to_owned(),
        }))
    }

    /// Waits until a node holds the leader lock and commits a write
    /// (`SELECT txid_current()`), and returns its index.
    ///
    /// # Errors
    ///
    /// [`ClusterError::ProcessExited`] if a Patroni or etcd died, or
    /// [`ClusterError::Timeout`] with the tail of every log.
    pub async fn wait_for_leader(&self) -> Result<usize, ClusterError> {
        self.wait_for_writable_leader(None).await
    }

    /// Waits until a leader accepts writes and every node whose Patroni
    /// runs streams from it (and, in synchronous mode, one of them is a
    /// synchronous standby); returns the leader's index.
    ///
    /// # Errors
    ///
    /// As for [`PatroniCluster::wait_for_leader`].
    pub async fn wait_until_streaming(&self) -> Result<usize, ClusterError> {
        let result = poll::until(
            || "a leader that accepts writes and every running node streaming from it".to_owned(),
            self.timeout,
            || self.check_streaming(None),
        )
        .await;
        result.map_err(|err| self.with_logs(err))
    }

    /// Waits until a node other than `not` holds the leader lock and
    /// accepts writes.
    pub(super) async fn wait_for_writable_leader(
        &self,
        not: Option<usize>,
    ) -> Result<usize, ClusterError> {
        let what = || match not {
            Some(old) => format!("a leader other than node {old} that accepts writes"),
            None => "a leader that accepts writes".to_owned(),
        };
        let result = poll::until(what, self.timeout, || async move {
            let leader = match self.writable_leader().await? {
                Check::Done(leader) => leader,
                Check::Pending(why) => return Ok(Check::Pending(why)),
            };
            Ok(if Some(leader) == not {
                Check::Pending(format!("node {leader} still holds the leader lock"))
            } else {
                Check::Done(leader)
            })
        })
        .await;
        result.map_err(|err| self.with_logs(err))
    }

    /// Waits until node `index` is the leader or streams from it.
    pub(super) async fn wait_for_node(&self, index: usize) -> Result<usize, ClusterError> {
        let result = poll::until(
            || format!("node {index} to lead or to stream from the leader"),
            self.timeout,
            || self.check_streaming(Some(index)),
        )
        .await;
        result.map_err(|err| self.with_logs(err))
    }

    /// Waits until etcd reports itself healthy.
    pub(super) async fn wait_for_etcd(&self) -> Result<(), ClusterError> {
        let port = self.etcd.files.client_port;
        let result = poll::until(
            || format!("etcd on port {port} to be healthy"),
            self.timeout,
            || async move {
                self.etcd.process.check()?;
                Ok(
                    match Request::get(port, "/health").json(REST_TIMEOUT).await {
                        Ok(health)
                            if health.get("health").and_then(|h| h.as_str()) == Some("true") =>
                        {
                            Check::Done(())
                        }
                        Ok(health) => Check::Pending(format!("health: {health}")),
                        Err(err) => Check::Pending(err.to_string()),
                    },
                )
            },
        )
        .await;
        result.map_err(|err| self.with_logs(err))
    }

    /// Fails if a daemon that should run has exited.
    fn check_processes(&self) -> Result<(), ClusterError> {
        self.etcd.process.check()?;
        for node in &self.nodes {
            node.patroni.check()?;
        }
        Ok(())
    }

    /// The leader, if one holds the lock and commits a write.
    async fn writable_leader(&self) -> Result<Check<usize>, ClusterError> {
        self.check_processes()?;
        let leader = match self.leader().await {
            Ok(Some(leader)) => leader,
            Ok(None) => return Ok(Check::Pending("no member holds the leader lock".to_owned())),
            Err(err) => return Ok(Check::Pending(err.to_string())),
        };
        Ok(match self.commit_on(leader).await {
            Ok(()) => Check::Done(leader),
            Err(err) => Check::Pending(format!("leader node {leader}: {err}")),
        })
    }

    /// Commits a transaction with a transaction id on node `index`.
    pub(super) async fn commit_on(&self, index: usize) -> Result<(), ClusterError> {
        let port = self.node(index)?.files.pg_port;
        let name = format!("node {index}");
        sql::query_value::<i64>(&name, port, "SELECT txid_current()", &[]).await?;
        Ok(())
    }

    /// Done with the leader once it accepts writes and every running node
    /// (or just `only`) is the leader or streams from it.
    async fn check_streaming(&self, only: Option<usize>) -> Result<Check<usize>, ClusterError> {
        let leader = match self.writable_leader().await? {
            Check::Done(leader) => leader,
            pending @ Check::Pending(_) => return Ok(pending),
        };
        let mut standbys = 0;
        for (index, node) in self.nodes.iter().enumerate() {
            let checked = match only {
                Some(only) => only == index,
                None => node.patroni.is_running(),
            };
            if index == leader || !checked {
                continue;
            }
            if let Some(why) = self.not_streaming(index, leader).await {
                return Ok(Check::Pending(why));
            }
            standbys += 1;
        }
        if self.settings.synchronous_mode && only.is_none() && standbys > 0 {
            let leader_node = &self.nodes[leader].files;
            let name = format!("node {leader}");
            let sync: i64 = match sql::query_value(&name, leader_node.pg_port, SYNC_SQL, &[]).await
            {
                Ok(count) => count,
                Err(err) => return Ok(Check::Pending(err.to_string())),
            };
            if sync == 0 {
                return Ok(Check::Pending(format!(
                    "no synchronous standby streams from leader node {leader} yet"
                )));
            }
            // Patroni records the synchronous standby a moment later; until it has, it refuses
            // a switchover (HTTP 412).
            match Request::get(leader_node.rest_port, "/cluster")
                .json(REST_TIMEOUT)
                .await
            {
                Ok(cluster) if rest::has_sync_standby(&cluster) => {}
                Ok(_) => {
                    return Ok(Check::Pending(
                        "Patroni has not recorded a synchronous standby yet".to_owned(),
                    ));
                }
                Err(err) => return Ok(Check::Pending(err.to_string())),
            }
        }
        Ok(Check::Done(leader))
    }

    /// Why node `index` does not stream from node `leader`, if it does not.
    async fn not_streaming(&self, index: usize, leader: usize) -> Option<String> {
        let node = &self.nodes[index].files;
        let leader_files = &self.nodes[leader].files;
        let name = format!("node {index}");
        let receiver: String = match sql::query_value(&name, node.pg_port, RECEIVER_SQL, &[]).await
        {
            Ok(receiver) => receiver,
            Err(err) => return Some(err.to_string()),
        };
        if receiver != format!("streaming from port {}", leader_files.pg_port) {
            return Some(format!("{name}: {receiver} (leader: node {leader})"));
        }
        let leader_name = format!("node {leader}");
        match sql::query_value::<i64>(
            &leader_name,
            leader_files.pg_port,
            SENDER_SQL,
            &[&node.name],
        )
        .await
        {
            Ok(0) => Some(format!(
                "{leader_name} has no streaming entry for {} in pg_stat_replication",
                node.name
            )),
            Ok(_) => None,
            Err(err) => Some(err.to_string()),
        }
    }
}
