use serde::{Deserialize, Serialize};

/// What a handler answers: its data, and where each of its queries ran.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply<T> {
    /// The handler's policy type (or fn) name.
    pub handler: String,
    /// The handler's result.
    pub data: T,
    /// One record per query, in order.
    pub queries: Vec<QueryRecord>,
}

/// Where one query ran, as the server itself said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRecord {
    /// What the query did.
    pub label: String,
    /// `pg_is_in_recovery()` of the server that ran it; `None` when the query returned no row.
    pub in_recovery: Option<bool>,
    /// `inet_server_port()` of the server that ran it; `None` when the query returned no row.
    pub port: Option<i32>,
}

impl QueryRecord {
    /// A query whose row carried the server's answer.
    pub(crate) fn new(label: &str, in_recovery: bool, port: i32) -> Self {
        QueryRecord {
            label: label.to_owned(),
            in_recovery: Some(in_recovery),
            port: Some(port),
        }
    }

    /// A query from the first of its rows, if any.
    pub(crate) fn from_rows<T>(label: &str, rows: &[(T, bool, i32)]) -> Self {
        match rows.first() {
            Some((_, in_recovery, port)) => QueryRecord::new(label, *in_recovery, *port),
            None => QueryRecord {
                label: format!("{label} (no rows)"),
                in_recovery: None,
                port: None,
            },
        }
    }
}

impl<T> Reply<T> {
    pub(crate) fn new(handler: &str, data: T, queries: Vec<QueryRecord>) -> Self {
        Reply {
            handler: handler.to_owned(),
            data,
            queries,
        }
    }
}
