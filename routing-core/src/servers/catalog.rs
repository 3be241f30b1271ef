//! The SQL the router itself sends: role checks, WAL positions, causal-token checks and type
//! lookups. Every statement of the router's own is here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::QueryResult;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Oid, Text};
use diesel_async::RunQueryDsl;

use super::ServerSession;

use crate::causal::CausalToken;

#[cfg(feature = "sync")]
pub(crate) mod blocking;

/// Whether the server is in recovery.
const IN_RECOVERY: &str = "pg_is_in_recovery()";
/// The same, in the round trip that makes the session read-only (the sync pool's setup; the
/// async pool's also learns the session's server process, see [`set_up_session`]).
#[cfg(feature = "sync")]
const READ_ONLY_IN_RECOVERY: &str =
    "pg_is_in_recovery() FROM set_config('default_transaction_read_only', 'on', false)";
/// The primary's WAL insert position, in bytes.
const WAL_INSERT_POSITION: &str = "(pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint";
/// Whether a standby replayed a position: this, the position as text, then [`REPLAYED_END`].
const REPLAYED_START: &str = "coalesce(pg_last_wal_replay_lsn() >= ";
const REPLAYED_END: &str = "::pg_lsn, false)";
/// How often a read that waits for a standby to replay its causal token asks again.
const REPLAY_POLL: Duration = Duration::from_millis(5);

/// OIDs of custom PostgreSQL types by (schema, name): (type OID, array type OID). Physical
/// replicas share their primary's.
pub(crate) type TypeCache = Mutex<HashMap<(Option<String>, String), (u32, u32)>>;

/// Whether the server is a standby.
pub(crate) async fn in_recovery(conn: &mut ServerSession) -> QueryResult<bool> {
    diesel::select(diesel::dsl::sql::<Bool>(IN_RECOVERY))
        .get_result(conn)
        .await
}

/// A session's server process, to end it from another session: its pid, and when it started
/// (microseconds since the epoch), so that a pid the system gave to a later process is never
/// mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backend {
    pid: i32,
    started: i64,
}

/// The start of a server process (see [`Backend`]), from `pg_stat_get_activity`.
const BACKEND_START: &str = "(SELECT (extract(epoch FROM backend_start) * 1000000)::bigint \
                             FROM pg_stat_get_activity(pg_backend_pid()))";

/// Prepares a new session in one round trip: a replica's is made read-only on the server.
/// Returns whether the server is in recovery, and the session's server process.
pub(crate) async fn set_up_session(
    conn: &mut ServerSession,
    read_only: bool,
) -> QueryResult<(bool, Option<Backend>)> {
    let start = if read_only {
        format!("{BACKEND_START} FROM set_config('default_transaction_read_only', 'on', false)")
    } else {
        BACKEND_START.to_owned()
    };
    let (in_recovery, pid, started) = diesel::select((
        diesel::dsl::sql::<Bool>("pg_is_in_recovery()"),
        diesel::dsl::sql::<Integer>("pg_backend_pid()"),
        diesel::dsl::sql::<Nullable<BigInt>>(&start),
    ))
    .get_result::<(bool, i32, Option<i64>)>(conn)
    .await?;
    Ok((in_recovery, started.map(|started| Backend { pid, started })))
}

/// Ends the server process `backend` (another session's): its open transaction is rolled
/// back and its locks released. Returns whether it was still there to end.
pub(crate) async fn terminate(conn: &mut ServerSession, backend: Backend) -> QueryResult<bool> {
    let ended: Option<bool> = diesel::select(diesel::dsl::sql::<Nullable<Bool>>(&format!(
        "(SELECT pg_terminate_backend(pid) FROM pg_stat_get_activity({pid}) \
         WHERE pid = {pid} AND (extract(epoch FROM backend_start) * 1000000)::bigint = {started})",
        pid = backend.pid,
        started = backend.started,
    )))
    .get_result(conn)
    .await?;
    Ok(ended == Some(true))
}

/// The primary's WAL insert position: every write committed before is behind it.
pub(crate) async fn wal_insert_position(conn: &mut ServerSession) -> QueryResult<u64> {
    lsn(conn, WAL_INSERT_POSITION).await
}

/// The primary's flushed WAL position: all that replicas can replay. (The insert position can
/// sit a page header past it on an idle primary, which no replica ever reaches.)
pub(crate) async fn wal_flush_position(conn: &mut ServerSession) -> QueryResult<u64> {
    lsn(conn, "(pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint").await
}

async fn lsn(conn: &mut ServerSession, sql: &'static str) -> QueryResult<u64> {
    let lsn: i64 = diesel::select(diesel::dsl::sql::<BigInt>(sql))
        .get_result(conn)
        .await?;
    Ok(u64::try_from(lsn).unwrap_or_default())
}

/// A standby's state for the health probe: whether it is in recovery, and its replay position.
pub(crate) async fn replica_state(conn: &mut ServerSession) -> QueryResult<(bool, Option<u64>)> {
    let (in_recovery, replay) = diesel::select((
        diesel::dsl::sql::<Bool>("pg_is_in_recovery()"),
        diesel::dsl::sql::<Nullable<BigInt>>("(pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"),
    ))
    .get_result::<(bool, Option<i64>)>(conn)
    .await?;
    Ok((in_recovery, replay.and_then(|lsn| u64::try_from(lsn).ok())))
}

/// A node's state for the health probe of a discovering pool: whether it is in recovery, and
/// its WAL position: the replay position of a standby, the flushed position of a primary.
pub(crate) async fn node_state(conn: &mut ServerSession) -> QueryResult<(bool, Option<u64>)> {
    let (in_recovery, lsn) = diesel::select((
        diesel::dsl::sql::<Bool>("pg_is_in_recovery()"),
        diesel::dsl::sql::<Nullable<BigInt>>(
            "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_flush_lsn() END - '0/0'::pg_lsn)::bigint",
        ),
    ))
    .get_result::<(bool, Option<i64>)>(conn)
    .await?;
    Ok((in_recovery, lsn.and_then(|lsn| u64::try_from(lsn).ok())))
}

/// Whether the standby on `conn` has replayed `token`, asking again for up to `wait`.
pub(crate) async fn replayed(
    conn: &mut ServerSession,
    token: CausalToken,
    wait: Duration,
) -> QueryResult<bool> {
    let deadline = Instant::now() + wait;
    loop {
        let done: bool = diesel::select(
            diesel::dsl::sql::<Bool>(REPLAYED_START)
                .bind::<Text, _>(token.lsn_text())
                .sql(REPLAYED_END),
        )
        .get_result(conn)
        .await?;
        let now = Instant::now();
        if done || now >= deadline {
            return Ok(done);
        }
        crate::clock::sleep((deadline - now).min(REPLAY_POLL)).await;
    }
}

/// The OIDs of the type `name` (in `schema`, or found by the search path).
pub(crate) async fn lookup_type(
    conn: &mut ServerSession,
    schema: Option<&str>,
    name: &str,
) -> QueryResult<(u32, u32)> {
    match schema {
        Some(schema) => {
            diesel::dsl::sql::<(Oid, Oid)>(
                "SELECT pg_type.oid, pg_type.typarray FROM pg_type \
                 INNER JOIN pg_namespace ON pg_type.typnamespace = pg_namespace.oid \
                 WHERE pg_type.typname = ",
            )
            .bind::<Text, _>(name)
            .sql(" AND pg_namespace.nspname = ")
            .bind::<Text, _>(schema)
            .sql(" LIMIT 1")
            .get_result(conn)
            .await
        }
        None => {
            diesel::dsl::sql::<(Oid, Oid)>(
                "SELECT pg_type.oid, pg_type.typarray FROM pg_type \
                 WHERE pg_type.oid = quote_ident(",
            )
            .bind::<Text, _>(name)
            .sql(")::regtype::oid LIMIT 1")
            .get_result(conn)
            .await
        }
    }
}
