//! A statement that tokio-postgres refuses on the client (a missing bind, a NUL byte in its
//! text) is its caller's error alone, on both connection kinds, in a replica scope and out of
//! one: no server is banned, the read does not move on, and the error is neither a lost primary
//! nor worth retrying.

use routing_core::{Error, with_read_replica};
use routing_tests::{servers, unique};

use crate::kinds::{Kind, Pool, on, on_both_kinds};

on_both_kinds!(a_statements_own_client_side_error_is_its_callers_alone);

async fn a_statements_own_client_side_error_is_its_callers_alone(kind: Kind) {
    let servers = servers().await;
    let pool = Pool::build(kind, servers.pool_builder(&unique("client_errors")));
    let mut conn = pool.get().await;
    let statements = [
        ("a missing bind", "SELECT $1::int AS v"),
        ("a NUL byte", "SELECT 'a\0b' AS v"),
    ];
    for (what, sql) in statements {
        for replica_scope in [true, false] {
            let result = with_read_replica(replica_scope, async {
                on!(conn, |c| diesel::sql_query(sql).execute(c))
            })
            .await;
            let error = result.expect_err(what);
            if let Some(routed) = Error::from_diesel(&error) {
                assert!(
                    !matches!(routed, Error::PrimaryLost { .. }) && !routed.is_retryable(),
                    "{what} (replica scope: {replica_scope}): {routed}"
                );
            }
        }
    }
    let status = match &pool {
        Pool::Async(pool) => pool.status(),
        Pool::Sync(pool) => pool.status(),
    };
    for server in &status.servers {
        assert_eq!(server.bans, 0, "{server:?}");
    }
    let server = with_read_replica(true, conn.where_ran()).await;
    assert!(
        server.in_recovery,
        "reads go on on the replicas: {server:?}"
    );
}
