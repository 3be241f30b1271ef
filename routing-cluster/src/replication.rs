//! Observing replication: catching up and lag.

use crate::faults::usable;
use crate::poll::{self, Check};
use crate::{ClusterError, LocalCluster, sql};

/// Bytes of WAL the replica has not replayed yet, relative to `$1`.
const LAG_SQL: &str = "SELECT greatest(coalesce(pg_wal_lsn_diff($1::text::pg_lsn, \
                       pg_last_wal_replay_lsn()), pg_wal_lsn_diff($1::text::pg_lsn, '0/0')), 0)::bigint";

impl LocalCluster {
    /// Waits until every running, unpaused, unfrozen replica has replayed
    /// the primary's WAL up to its position at the time of the call.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Timeout`] after the cluster timeout, or a failed
    /// query.
    pub async fn wait_for_replicas(&self) -> Result<(), ClusterError> {
        let target = self.primary_lsn().await?;
        for (index, replica) in self.replicas.iter().enumerate() {
            {
                let state = replica.state.lock().await;
                if usable(index, &state).is_err() || state.paused {
                    continue;
                }
            }
            poll::until(
                || format!("{} to replay up to {target}", replica.name),
                self.ctx.timeout,
                || async {
                    let lag: i64 =
                        sql::query_value(&replica.name, replica.port, LAG_SQL, &[&target]).await?;
                    Ok(if lag == 0 {
                        Check::Done(())
                    } else {
                        Check::Pending(format!("{lag} bytes behind"))
                    })
                },
            )
            .await?;
        }
        Ok(())
    }

    /// How many bytes of WAL replica `index` has yet to replay to reach the
    /// primary's current position (0 when caught up).
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchReplica`], [`ClusterError::ReplicaUnavailable`]
    /// when it is stopped or frozen, or a failed query.
    pub async fn replica_lag_bytes(&self, index: usize) -> Result<u64, ClusterError> {
        let replica = self.replica(index)?;
        let state = replica.state.lock().await;
        usable(index, &state)?;
        let target = self.primary_lsn().await?;
        let lag: i64 = sql::query_value(&replica.name, replica.port, LAG_SQL, &[&target]).await?;
        drop(state);
        Ok(u64::try_from(lag).unwrap_or(0))
    }

    /// The primary's current WAL write position, as text.
    async fn primary_lsn(&self) -> Result<String, ClusterError> {
        sql::query_value(
            &self.primary.name,
            self.primary.port,
            "SELECT pg_current_wal_lsn()::text",
            &[],
        )
        .await
    }
}
