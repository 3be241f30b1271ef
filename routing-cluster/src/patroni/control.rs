//! Controls: switchover, killing the leader, restarting a node, pausing
//! Patroni, promoting a standby behind Patroni's back.
//!
//! Each control holds the cluster's control lock for its whole duration, so
//! concurrent controls run one after the other.

use std::time::Duration;

use serde_json::json;
use tokio_postgres::NoTls;

use super::PatroniCluster;
use super::process;
use super::rest::Request;
use super::wait::REST_TIMEOUT;
use crate::command::ServerCommand;
use crate::poll::{self, Check};
use crate::{ClusterError, signals, sql};

impl PatroniCluster {
    /// A planned switchover through Patroni's REST API (`POST /switchover`
    /// to the leader), to node `candidate` or, with `None`, to a replica
    /// Patroni picks; waits until the new leader accepts writes and
    /// returns its index. The other nodes follow it a few seconds later
    /// (see [`PatroniCluster::wait_until_streaming`]).
    ///
    /// In synchronous mode Patroni accepts only the synchronous standby as
    /// a candidate (HTTP 412 otherwise).
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchNode`], [`ClusterError::NodeUnavailable`]
    /// when the candidate is the leader, [`ClusterError::Http`] when
    /// Patroni refuses, or [`ClusterError::Timeout`].
    pub async fn switchover(&self, candidate: Option<usize>) -> Result<usize, ClusterError> {
        let _controls = self.controls.lock().await;
        if let Some(index) = candidate {
            self.node(index)?;
        }
        let leader = self.wait_for_leader().await?;
        if candidate == Some(leader) {
            return Err(ClusterError::NodeUnavailable {
                index: leader,
                state: "is already the leader; pick a replica as the candidate".to_owned(),
            });
        }
        let mut body = json!({ "leader": self.nodes[leader].files.name });
        if let Some(index) = candidate {
            body["candidate"] = json!(self.nodes[index].files.name);
        }
        let body = body.to_string();
        let request = Request {
            method: "POST",
            port: self.nodes[leader].files.rest_port,
            path: "/switchover",
            body: Some(&body),
        };
        // Patroni answers once the leader lock moved (or it gave up).
        let response = request.send(self.timeout).await?;
        if response.status != 200 {
            return Err(request.error(format!("status {}: {}", response.status, response.body)));
        }
        self.wait_for_writable_leader(Some(leader)).await
    }

    /// Kills the leader like a crash: `SIGKILL` to its Patroni, its
    /// postmaster and every PostgreSQL process at once. Returns the index
    /// of the killed node, which stays down until
    /// [`PatroniCluster::restart_node`]. The others elect a new leader
    /// once the lock expires, about `ttl` later (see
    /// [`PatroniCluster::wait_for_leader`]).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Timeout`] when there is no leader to kill or its
    /// processes outlive the signal, or a failed `kill` command.
    pub async fn kill_leader(&self) -> Result<usize, ClusterError> {
        let _controls = self.controls.lock().await;
        let leader = self.wait_for_leader().await?;
        let node = &self.nodes[leader];
        let patroni = node.patroni.take();
        let mut pids: Vec<u32> = patroni.iter().map(std::process::Child::id).collect();
        if let Some(postmaster) = process::postmaster(&node.files.data_dir) {
            pids.push(postmaster);
            pids.extend(signals::descendants(postmaster));
        }
        let sent = signals::send("KILL", &pids).await;
        if let Some(patroni) = patroni {
            // Already dead or dying: reaping it does not block for long.
            tokio::task::spawn_blocking(move || process::kill_and_reap(patroni))
                .await
                .map_err(|err| ClusterError::io("cannot reap patroni", err.into()))?;
        }
        sent?;
        let left = process::wait_gone(&pids, self.timeout).await;
        if !left.is_empty() {
            return Err(ClusterError::Timeout {
                what: format!("the processes of node {leader} to die"),
                after: self.timeout,
                detail: format!("pids {left:?} survived SIGKILL"),
            });
        }
        tracing::debug!(node = leader, ?pids, "killed the leader");
        Ok(leader)
    }

    /// Starts node `index`'s Patroni again (doing nothing if it runs) and
    /// waits until the node leads or streams from the leader. A node whose
    /// timeline diverged rejoins through `pg_rewind`.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchNode`], a failed start,
    /// [`ClusterError::ProcessExited`] or [`ClusterError::Timeout`].
    pub async fn restart_node(&self, index: usize) -> Result<(), ClusterError> {
        let _controls = self.controls.lock().await;
        let node = self.node(index)?;
        node.patroni.start(&self.root, self.run_as)?;
        self.wait_for_node(index).await?;
        Ok(())
    }

    /// Promotes standby `index` with `pg_ctl promote`, behind Patroni's
    /// back, and makes the promotion durable with a `CHECKPOINT`: until
    /// Patroni notices, two nodes accept writes (a split brain) on diverging
    /// timelines.
    ///
    /// Patroni notices within one HA loop (`loop_wait`, 1 s): the node does
    /// not hold the leader lock, so Patroni shuts it down at once
    /// ("Demoting self (immediate-nolock)"), rewinds it with `pg_rewind`
    /// and starts it as a replica again; the writes it took alone are lost.
    /// To keep the split brain until you are done, call
    /// [`PatroniCluster::pause_patroni`] first: a paused Patroni leaves it
    /// running as a primary without the lock, and
    /// [`PatroniCluster::resume_patroni`] ends it the same way.
    ///
    /// The node's Patroni is held (`SIGSTOP`) from the promotion until the
    /// checkpoint is done. Otherwise Patroni may shut the node down before
    /// the promotion's checkpoint records the new timeline in
    /// `pg_control`; `pg_rewind` then answers "no rewind required" and the
    /// node never streams again ("highest timeline 1 of the primary is
    /// behind recovery timeline 2"), as seen with Patroni 3.0.2.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchNode`], [`ClusterError::NodeUnavailable`]
    /// when the node is not a running standby, the failed `pg_ctl` or
    /// `CHECKPOINT`.
    pub async fn promote_outside_patroni(&self, index: usize) -> Result<(), ClusterError> {
        let _controls = self.controls.lock().await;
        let node = self.node(index)?;
        let name = format!("node {index}");
        let port = node.files.pg_port;
        let in_recovery: bool = sql::query_value(&name, port, "SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|err| ClusterError::NodeUnavailable {
                index,
                state: format!("does not answer: {err}"),
            })?;
        if !in_recovery {
            return Err(ClusterError::NodeUnavailable {
                index,
                state: "is not a standby (pg_is_in_recovery() is false)".to_owned(),
            });
        }
        let patroni = node.patroni.pid();
        if let Some(pid) = patroni {
            signals::send("STOP", &[pid]).await?;
        }
        let promoted = async {
            ServerCommand::new(self.bins.program("pg_ctl"), self.run_as)
                .current_dir(&self.root)
                .arg("promote")
                .arg("-D")
                .arg(&node.files.data_dir)
                .args(["-w", "-t"])
                .arg(self.timeout.as_secs().max(1).to_string())
                .output()
                .await?;
            checkpoint(&name, port, self.timeout).await
        }
        .await;
        if let Some(pid) = patroni {
            signals::send("CONT", &[pid]).await?;
        }
        promoted
    }

    /// Puts the cluster in Patroni's maintenance mode (`PATCH /config`
    /// with `pause: true`) and waits until every running Patroni reports
    /// it: Patroni then neither fails over nor demotes a primary that
    /// lacks the lock.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Http`] or [`ClusterError::Timeout`].
    pub async fn pause_patroni(&self) -> Result<(), ClusterError> {
        let _controls = self.controls.lock().await;
        self.set_pause(true).await
    }

    /// Leaves Patroni's maintenance mode and waits until every running
    /// Patroni reports it; Patroni then acts on what it finds, e.g. demotes
    /// a node promoted by [`PatroniCluster::promote_outside_patroni`].
    ///
    /// # Errors
    ///
    /// As for [`PatroniCluster::pause_patroni`].
    pub async fn resume_patroni(&self) -> Result<(), ClusterError> {
        let _controls = self.controls.lock().await;
        self.set_pause(false).await
    }

    /// Sets `pause` in the dynamic configuration and waits until it took.
    async fn set_pause(&self, pause: bool) -> Result<(), ClusterError> {
        let body = json!({ "pause": pause }).to_string();
        let mut refused = Some(ClusterError::Http {
            request: format!("PATCH /config {body}"),
            detail: "no node runs patroni; call restart_node first".to_owned(),
        });
        for node in self.nodes.iter().filter(|node| node.patroni.is_running()) {
            let request = Request {
                method: "PATCH",
                port: node.files.rest_port,
                path: "/config",
                body: Some(&body),
            };
            match request.send(REST_TIMEOUT).await {
                Ok(response) if response.status == 200 => {
                    refused = None;
                    break;
                }
                Ok(response) => {
                    refused = Some(
                        request.error(format!("status {}: {}", response.status, response.body)),
                    );
                }
                Err(err) => refused = Some(err),
            }
        }
        if let Some(err) = refused {
            return Err(err);
        }
        let wanted = if pause { "paused" } else { "not paused" };
        let result = poll::until(
            || format!("every running patroni to report {wanted}"),
            self.timeout,
            || async {
                for (index, node) in self.nodes.iter().enumerate() {
                    if !node.patroni.is_running() {
                        continue;
                    }
                    let status = match Request::get(node.files.rest_port, "/patroni")
                        .json(REST_TIMEOUT)
                        .await
                    {
                        Ok(status) => status,
                        Err(err) => return Ok(Check::Pending(err.to_string())),
                    };
                    let paused = status.get("pause").and_then(serde_json::Value::as_bool);
                    if paused.unwrap_or(false) != pause {
                        return Ok(Check::Pending(format!("node {index} is not {wanted} yet")));
                    }
                }
                Ok(Check::Done(()))
            },
        )
        .await;
        result.map_err(|err| self.with_logs(err))
    }
}

/// Runs `CHECKPOINT` on the server on `port` (named `server` in errors).
async fn checkpoint(server: &str, port: u16, timeout: Duration) -> Result<(), ClusterError> {
    let url = format!("{}?connect_timeout=5", sql::url(port));
    let work = async {
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
        let driver = tokio::spawn(connection);
        let result = client.batch_execute("CHECKPOINT").await;
        drop(client);
        // The driver ends once the client is gone; its own error is moot.
        let _ = driver.await;
        result
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(ClusterError::Query {
            server: server.to_owned(),
            query: "CHECKPOINT".to_owned(),
            detail: source.to_string(),
            source,
        }),
        Err(_) => Err(ClusterError::Timeout {
            what: format!("CHECKPOINT on {server}"),
            after: timeout,
            detail: "no answer".to_owned(),
        }),
    }
}
