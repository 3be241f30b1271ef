//! Fault controls: stopping, killing, pausing and freezing replicas.
//!
//! Each control locks the replica's state for its whole duration, so
//! concurrent controls of one replica run one after the other.

use crate::poll::{self, Check};
use crate::server::{Server, State};
use crate::{ClusterError, LocalCluster, sql};

impl LocalCluster {
    /// Shuts replica `index` down cleanly (`pg_ctl stop -m fast`) and waits
    /// until it is gone. Stopping a stopped replica does nothing.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchReplica`], or the failed `pg_ctl` command.
    pub async fn stop_replica(&self, index: usize) -> Result<(), ClusterError> {
        self.halt(index, "fast").await
    }

    /// Kills replica `index` like a crash (`pg_ctl stop -m immediate`): no
    /// shutdown checkpoint, crash recovery on the next start.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchReplica`], or the failed `pg_ctl` command.
    pub async fn kill_replica(&self, index: usize) -> Result<(), ClusterError> {
        self.halt(index, "immediate").await
    }

    /// Starts replica `index` again on its port (thawing it if frozen) and
    /// waits until it accepts connections and streams from the primary.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchReplica`], [`ClusterError::ServerStart`] with
    /// the log tail, or [`ClusterError::Timeout`].
    pub async fn start_replica(&self, index: usize) -> Result<(), ClusterError> {
        let replica = self.replica(index)?;
        let mut state = replica.state.lock().await;
        thaw_if_frozen(replica, &mut state).await?;
        if !state.running {
            replica.start(&self.ctx).await?;
            *state = State {
                running: true,
                ..State::default()
            };
        }
        replica.wait_streaming(&self.ctx, self.primary.port).await
    }

    /// Pauses WAL replay on replica `index` (`pg_wal_replay_pause()`) and
    /// waits until replay has actually stopped; the replica keeps receiving
    /// WAL, so its lag grows with every write on the primary.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchReplica`], [`ClusterError::ReplicaUnavailable`]
    /// when it is stopped or frozen, a failed query, or a timeout.
    pub async fn pause_replay(&self, index: usize) -> Result<(), ClusterError> {
        self.set_replay(index, true).await
    }

    /// Resumes WAL replay on replica `index` (`pg_wal_replay_resume()`).
    ///
    /// # Errors
    ///
    /// As for [`LocalCluster::pause_replay`].
    pub async fn resume_replay(&self, index: usize) -> Result<(), ClusterError> {
        self.set_replay(index, false).await
    }

    /// Freezes replica `index`: `SIGSTOP` to its postmaster and every child.
    /// Connections still open at the TCP level but never get an answer, like
    /// a hung host. Freezing a frozen replica does nothing.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchReplica`], [`ClusterError::ReplicaUnavailable`]
    /// when it is stopped, or a failed `kill` command.
    pub async fn freeze_replica(&self, index: usize) -> Result<(), ClusterError> {
        let replica = self.replica(index)?;
        let mut state = replica.state.lock().await;
        if state.frozen.is_some() {
            return Ok(());
        }
        if !state.running {
            return Err(stopped(index));
        }
        state.frozen = Some(replica.freeze().await?);
        Ok(())
    }

    /// Thaws replica `index`: `SIGCONT` to everything frozen, children
    /// first. Thawing a replica that is not frozen does nothing.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchReplica`], or a failed `kill` command.
    pub async fn thaw_replica(&self, index: usize) -> Result<(), ClusterError> {
        let replica = self.replica(index)?;
        let mut state = replica.state.lock().await;
        thaw_if_frozen(replica, &mut state).await
    }

    /// Stops replica `index` with `pg_ctl stop -m <mode>`.
    async fn halt(&self, index: usize, mode: &str) -> Result<(), ClusterError> {
        let replica = self.replica(index)?;
        let mut state = replica.state.lock().await;
        thaw_if_frozen(replica, &mut state).await?;
        if state.running {
            replica.stop(&self.ctx, mode).await?;
            *state = State::default();
        }
        Ok(())
    }

    /// Pauses or resumes replay and waits for the pause state to follow.
    async fn set_replay(&self, index: usize, pause: bool) -> Result<(), ClusterError> {
        let replica = self.replica(index)?;
        let mut state = replica.state.lock().await;
        usable(index, &state)?;
        let (call, wanted) = if pause {
            ("SELECT pg_wal_replay_pause()::text", "paused")
        } else {
            ("SELECT pg_wal_replay_resume()::text", "not paused")
        };
        sql::query_value::<String>(&replica.name, replica.port, call, &[]).await?;
        poll::until(
            || format!("{} to report replay state '{wanted}'", replica.name),
            self.ctx.timeout,
            || async {
                let current: String = sql::query_value(
                    &replica.name,
                    replica.port,
                    "SELECT pg_get_wal_replay_pause_state()",
                    &[],
                )
                .await?;
                Ok(if current == wanted {
                    Check::Done(())
                } else {
                    Check::Pending(format!("replay state '{current}'"))
                })
            },
        )
        .await?;
        state.paused = pause;
        Ok(())
    }
}

/// Fails unless the replica is running and not frozen.
pub(crate) fn usable(index: usize, state: &State) -> Result<(), ClusterError> {
    if state.frozen.is_some() {
        Err(ClusterError::ReplicaUnavailable {
            index,
            state: "frozen; call thaw_replica first",
        })
    } else if !state.running {
        Err(stopped(index))
    } else {
        Ok(())
    }
}

/// The error for a replica that is not running.
fn stopped(index: usize) -> ClusterError {
    ClusterError::ReplicaUnavailable {
        index,
        state: "stopped; call start_replica first",
    }
}

/// Continues a frozen replica and records that it is no longer frozen.
async fn thaw_if_frozen(replica: &Server, state: &mut State) -> Result<(), ClusterError> {
    if let Some(pids) = &state.frozen {
        replica.thaw(pids).await?;
        state.frozen = None;
    }
    Ok(())
}
