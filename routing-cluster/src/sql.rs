//! One-shot queries, each on a fresh connection.
//!
//! No connection outlives a call: a tokio-postgres connection is driven by a
//! task on the runtime that spawned it, and every `#[tokio::test]` has its
//! own runtime that ends with the test.

use std::error::Error as _;
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_postgres::types::{FromSql, ToSql};

use crate::ClusterError;

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
    let work = async {
        let url = format!("{}?connect_timeout=5", url(port));
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .map_err(|err| query_error(server, sql, "cannot connect", err))?;
        let driver = tokio::spawn(connection);
        let value = match client.query_one(sql, params).await {
            Ok(row) => row
                .try_get(0)
                .map_err(|err| query_error(server, sql, "cannot read the result", err)),
            Err(err) => Err(query_error(server, sql, "", err)),
        };
        drop(client);
        // The driver ends once the client is gone; its own error is moot.
        let _ = driver.await;
        value
    };
    tokio::time::timeout(QUERY_TIMEOUT, work)
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
