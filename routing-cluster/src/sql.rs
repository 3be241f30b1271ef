//! One-shot queries, each on a fresh connection.
//!
//! No connection outlives a call: a tokio-postgres connection is driven by a
//! task on the runtime that spawned it, and every `#[tokio::test]` has its
//! own runtime that ends with the test. Connections use TLS when the server
//! offers it (see [`crate::tls::internal_connector`]), so they work on a
//! cluster that refuses plain TCP logins too.

use std::error::Error as _;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::{FromSql, ToSql};

use crate::ClusterError;
use crate::tls::internal_connector;

/// How long connecting plus running one control query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection URL of the server listening on `port`.
pub(crate) fn url(port: u16) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Connects to the server on `port` (named `server` in errors), runs `sql`,
/// which must return exactly one row, reads its first column and
/// disconnects.
pub(crate) async fn query_value<T>(
    server: &str,
    port: u16,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<T, ClusterError>
where
    T: for<'a> FromSql<'a>,
{
    with_client(server, port, sql, async |client| {
        match client.query_one(sql, params).await {
            Ok(row) => row
                .try_get(0)
                .map_err(|err| query_error(server, sql, "cannot read the result", err)),
            Err(err) => Err(query_error(server, sql, "", err)),
        }
    })
    .await
}

/// Connects to the server on `port` and runs `sql` with the simple query
/// protocol, which a transaction-mode PgBouncer passes through like any
/// other, ignoring what it returns.
pub(crate) async fn simple_query(server: &str, port: u16, sql: &str) -> Result<(), ClusterError> {
    with_client(server, port, sql, async |client| {
        client
            .simple_query(sql)
            .await
            .map(drop)
            .map_err(|err| query_error(server, sql, "", err))
    })
    .await
}

/// Connects to the server on `port`, runs `work` on the client (`sql` names
/// it in errors) and disconnects, all within [`QUERY_TIMEOUT`].
async fn with_client<T>(
    server: &str,
    port: u16,
    sql: &str,
    work: impl AsyncFnOnce(&Client) -> Result<T, ClusterError>,
) -> Result<T, ClusterError> {
    let run = async {
        let url = format!("{}?connect_timeout=5", url(port));
        // Boxed: the TLS handshake's future is deep, and it would nest in every caller's.
        let (client, connection) = Box::pin(tokio_postgres::connect(&url, internal_connector()))
            .await
            .map_err(|err| query_error(server, sql, "cannot connect", err))?;
        let driver = tokio::spawn(connection);
        let value = work(&client).await;
        drop(client);
        // The driver ends once the client is gone; its own error is moot.
        let _ = driver.await;
        value
    };
    tokio::time::timeout(QUERY_TIMEOUT, run)
        .await
        .map_err(|_| ClusterError::Timeout {
            what: format!("query `{sql}` on {server}"),
            after: QUERY_TIMEOUT,
            detail: "no answer (is the server frozen?)".to_owned(),
        })?
}

/// A [`ClusterError::Query`] whose detail spells out every cause.
fn query_error(server: &str, sql: &str, doing: &str, err: tokio_postgres::Error) -> ClusterError {
    let mut detail = if doing.is_empty() {
        err.to_string()
    } else {
        format!("{doing}: {err}")
    };
    let mut cause = err.source();
    while let Some(inner) = cause {
        detail.push_str(": ");
        detail.push_str(&inner.to_string());
        cause = inner.source();
    }
    ClusterError::Query {
        server: server.to_owned(),
        query: sql.to_owned(),
        detail,
        source: err,
    }
}
