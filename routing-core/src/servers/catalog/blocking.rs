//! The router's own SQL on a synchronous `diesel::PgConnection`: the same statements as the
//! async ones beside them, for the sync pool's sessions.

use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Bool, Text};
use diesel::{PgConnection, QueryResult, RunQueryDsl};

use super::{
    IN_RECOVERY, READ_ONLY_IN_RECOVERY, REPLAY_POLL, REPLAYED_END, REPLAYED_START,
    WAL_INSERT_POSITION,
};
use crate::causal::CausalToken;

/// Prepares a new session: a replica's is made read-only on the server. Returns whether the
/// server is in recovery, in the same round trip.
pub(crate) fn set_up_session(conn: &mut PgConnection, read_only: bool) -> QueryResult<bool> {
    let sql = if read_only {
        READ_ONLY_IN_RECOVERY
    } else {
        IN_RECOVERY
    };
    diesel::select(diesel::dsl::sql::<Bool>(sql)).get_result(conn)
}

/// The primary's WAL insert position: every write committed before is behind it.
pub(crate) fn wal_insert_position(conn: &mut PgConnection) -> QueryResult<u64> {
    let lsn: i64 =
        diesel::select(diesel::dsl::sql::<BigInt>(WAL_INSERT_POSITION)).get_result(conn)?;
    Ok(u64::try_from(lsn).unwrap_or_default())
}

/// Whether the standby on `conn` has replayed `token`, asking again for up to `wait`.
pub(crate) fn replayed(
    conn: &mut PgConnection,
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
        .get_result(conn)?;
        let now = Instant::now();
        if done || now >= deadline {
            return Ok(done);
        }
        std::thread::sleep((deadline - now).min(REPLAY_POLL));
    }
}
