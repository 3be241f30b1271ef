//! The operation a statement performs, as the OpenTelemetry database conventions name it
//! (`db.operation.name`): its leading keyword, uppercased.

use super::lexer::{Kind, Lexer};

/// The statement keywords reported as an operation; anything else reports none.
const OPERATIONS: &[&str] = &[
    "ABORT",
    "ALTER",
    "ANALYZE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DISCARD",
    "DO",
    "DROP",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "GRANT",
    "IMPORT",
    "INSERT",
    "LISTEN",
    "LOCK",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "PREPARE",
    "REFRESH",
    "REINDEX",
    "RELEASE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SELECT",
    "SET",
    "SHOW",
    "START",
    "TABLE",
    "TRUNCATE",
    "UNLISTEN",
    "UPDATE",
    "VACUUM",
    "VALUES",
    "WITH",
];

/// The leading keyword of `sql`, uppercased, when it is a statement keyword; comments and an
/// opening parenthesis are skipped (`(SELECT ...) UNION ...`).
pub(crate) fn operation_name(sql: &str) -> Option<&'static str> {
    let mut lexer = Lexer::new(sql);
    let word = loop {
        match lexer.next_plain() {
            Ok(Some(token)) if token.kind == Kind::LParen => {}
            Ok(Some(token)) if token.kind == Kind::Ident => break token.text,
            _ => return None,
        }
    };
    OPERATIONS
        .iter()
        .copied()
        .find(|name| name.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::operation_name;

    #[test]
    fn names_the_leading_keyword() {
        for (sql, name) in [
            ("SELECT 1", Some("SELECT")),
            ("  select * from t", Some("SELECT")),
            ("/* routing:primary */ SELECT 1", Some("SELECT")),
            ("-- a comment\ninsert into t values (1)", Some("INSERT")),
            ("(SELECT 1) UNION (SELECT 2)", Some("SELECT")),
            (
                "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
                Some("WITH"),
            ),
            ("update t set a = 1", Some("UPDATE")),
            ("frobnicate", None),
            ("", None),
            ("'unterminated", None),
        ] {
            assert_eq!(operation_name(sql), name, "{sql}");
        }
    }
}
