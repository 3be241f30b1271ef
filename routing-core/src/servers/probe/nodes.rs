//! One probe round of a pool that discovers its primary: every node is asked whether it is in
//! recovery; the one node that is not is the primary, the others are standbys whose lag is
//! measured against it. No node, or several, answering as primaries means no primary: writes
//! wait, and the status says why.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::{ProbeError, WalHistory, session};
use crate::servers::{Server, ServerSession, Shared, catalog};

/// What one node answered: whether it is in recovery, its WAL position, the round trip.
type Answer = Result<(bool, Option<u64>, Duration), String>;

/// Probes every node of `shared`, a discovering pool, and records what was found.
pub(super) async fn probe(
    shared: &Shared,
    sessions: &mut [Option<ServerSession>],
    history: &mut WalHistory,
    timeout: Duration,
) {
    let answers: Vec<Answer> = join_all(
        shared
            .replicas()
            .iter()
            .zip(sessions.iter_mut())
            .map(|(server, conn)| ask(shared, server, conn, timeout)),
    )
    .await;
    let claimants: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, answer)| matches!(answer, Ok((false, ..))))
        .map(|(node, _)| node)
        .collect();
    let found = match claimants.as_slice() {
        [node] => Ok(*node),
        [] => Err(format!(
            "no node answers as the primary ({} answer as standbys, {} do not answer)",
            answers
                .iter()
                .filter(|a| matches!(a, Ok((true, ..))))
                .count(),
            answers.iter().filter(|a| a.is_err()).count(),
        )),
        several => Err(format!(
            "nodes {several:?} all answer as primaries (a split brain): no write is sent until \
             one remains"
        )),
    };
    let primary_lsn = found
        .as_ref()
        .ok()
        .and_then(|node| answers[*node].as_ref().ok())
        .and_then(|(_, lsn, _)| *lsn);
    // Pool sizes first: writers woken by the new primary check out at its size.
    let primary_node = found.as_ref().ok().copied();
    for (node, server) in shared.replicas().iter().enumerate() {
        server.serve_as(primary_node == Some(node));
    }
    let topology = shared.topology();
    let previous = topology.primary();
    if topology.set(found) {
        match topology.primary() {
            Some(node) => {
                tracing::warn!(target: "routing_core", node, ?previous, "the primary changed");
                // The old primary's WAL positions say nothing of the new timeline's.
                *history = WalHistory::default();
                shared
                    .tokens()
                    .note_switch(crate::causal::now_ms(), primary_lsn);
            }
            None => tracing::warn!(
                target: "routing_core",
                ?previous,
                why = topology.missing(),
                "no primary"
            ),
        }
    }
    if let Some(lsn) = primary_lsn {
        history.push(Instant::now(), lsn);
        shared.tokens().note_primary(lsn);
    }
    for (server, answer) in shared.replicas().iter().zip(answers) {
        let health = server.health();
        match answer {
            Err(reason) => {
                health.set_standby(false);
                health.ban(reason);
            }
            Ok((in_recovery, lsn, latency)) => {
                health.set_standby(in_recovery);
                if in_recovery {
                    let lag_bytes = primary_lsn
                        .zip(lsn)
                        .map(|(primary, replay)| primary.saturating_sub(replay));
                    let lag =
                        lsn.map_or(Duration::ZERO, |replay| history.lag(replay, Instant::now()));
                    health.record_probe(lsn, lag_bytes, lag, latency);
                } else {
                    health.record_probe(None, Some(0), Duration::ZERO, latency);
                }
                health.admit();
            }
        }
    }
}

/// Asks one node for its state, within `timeout`.
async fn ask(
    shared: &Shared,
    server: &Server,
    conn: &mut Option<ServerSession>,
    timeout: Duration,
) -> Answer {
    let started = Instant::now();
    let probe = async {
        let session = session(shared, server.database_url(), conn).await?;
        Ok::<_, ProbeError>(catalog::node_state(session).await?)
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok((in_recovery, lsn))) => Ok((in_recovery, lsn, started.elapsed())),
        Ok(Err(error)) => {
            *conn = None;
            Err(format!("health probe failed: {error}"))
        }
        Err(_) => {
            *conn = None;
            Err(format!("health probe timed out after {timeout:?}"))
        }
    }
}
