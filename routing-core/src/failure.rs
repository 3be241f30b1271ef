//! What a failed statement says about its server: every inspection of a diesel error happens here.
//!
//! diesel-async keeps a server error's message and diesel's coarse [`DatabaseErrorKind`] but
//! drops its SQLSTATE, so the SQLSTATEs that matter for routing are recognised by the kind and
//! the message PostgreSQL sends with them ([`KNOWN`]). The messages are PostgreSQL's own
//! (`lc_messages` in English, the default for server logs and client messages alike).

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// What a failed statement means for the server it ran on, and so for a read that may still
/// run elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server or the connection to it is gone: take the server out of rotation, discard the
    /// connection, and let another server serve a read.
    Unreachable,
    /// A standby cancelled the statement because replay needed what it read: the server is fine,
    /// another one may serve the read; no ban.
    RecoveryConflict,
    /// A read-only session refused a write (SQLSTATE 25006): the statement must run on the
    /// primary.
    RefusedAsWrite,
    /// The statement's own error (a constraint, a syntax error, ...): hand it to the caller.
    Statement,
}

/// A server error the router recognises: its SQLSTATE, how diesel reports it, and what it means.
#[derive(Debug)]
pub(crate) struct Known {
    /// PostgreSQL's code, for the reader (diesel-async does not keep it).
    pub(crate) sqlstate: &'static str,
    /// The kind diesel gives it, when diesel maps the code to one.
    pub(crate) kind: Option<DatabaseErrorKind>,
    /// Text the message contains (`None`: any message of that kind).
    pub(crate) message: Option<&'static str>,
    /// What it means.
    pub(crate) failure: Failure,
}

/// The server errors that say something about the server rather than the statement.
pub(crate) const KNOWN: &[Known] = &[
    Known {
        sqlstate: "25006",
        kind: Some(DatabaseErrorKind::ReadOnlyTransaction),
        message: None,
        failure: Failure::RefusedAsWrite,
    },
    // `canceling statement due to conflict with recovery`, and `terminating connection due to
    // conflict with recovery` (then the connection is closed as well).
    Known {
        sqlstate: "40001",
        kind: Some(DatabaseErrorKind::SerializationFailure),
        message: Some("conflict with recovery"),
        failure: Failure::RecoveryConflict,
    },
    Known {
        sqlstate: "40P01",
        kind: None,
        message: Some("conflict with recovery"),
        failure: Failure::RecoveryConflict,
    },
    Known {
        sqlstate: "57P01",
        kind: None,
        message: Some("terminating connection due to administrator command"),
        failure: Failure::Unreachable,
    },
    // A backend whose postmaster died (the server was killed) says so as it exits.
    Known {
        sqlstate: "57P01",
        kind: None,
        message: Some("terminating connection due to unexpected postmaster exit"),
        failure: Failure::Unreachable,
    },
    Known {
        sqlstate: "57P02",
        kind: None,
        message: Some("terminating connection because of crash of another server process"),
        failure: Failure::Unreachable,
    },
    // `the database system is starting up`, `... is shutting down`, `... is in recovery mode`,
    // `... is not yet accepting connections`, `... is not accepting connections`.
    Known {
        sqlstate: "57P03",
        kind: None,
        message: Some("the database system is "),
        failure: Failure::Unreachable,
    },
];

/// The entry of [`KNOWN`] that `error` matches.
pub(crate) fn known(error: &DieselError) -> Option<&'static Known> {
    let DieselError::DatabaseError(kind, info) = error else {
        return None;
    };
    let message = info.message();
    KNOWN.iter().find(|known| {
        known.kind.as_ref().is_none_or(|k| k == kind)
            && known.message.is_none_or(|m| message.contains(m))
    })
}

/// Whether `error` is what a transaction pooler (PgBouncer in transaction mode) does to a
/// session's named prepared statements, which it gives to whichever server connection is free:
/// the statement's server never prepared it (`prepared statement "s3" does not exist`, SQLSTATE
/// 26000), another client's one holds its name (`... already exists`, 42P05), or holds another
/// statement under it (`bind message supplies 1 parameters, but prepared statement "s3" requires
/// 2`, 08P01). Only the names tokio-postgres gives (`s` and a number, and its type lookups'
/// `typeinfo` statements) count: a user's own `PREPARE` names say nothing of a pooler.
pub(crate) fn lost_named_statement(error: &DieselError) -> bool {
    let DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) = error else {
        return false;
    };
    let message = info.message();
    let named = |rest: &str| {
        let name = rest.split('"').next().unwrap_or_default();
        name.starts_with("typeinfo")
            || name
                .strip_prefix('s')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(rest) = message.strip_prefix("prepared statement \"") {
        return (rest.ends_with("\" does not exist") || rest.ends_with("\" already exists"))
            && named(rest);
    }
    message.starts_with("bind message supplies ")
        && message
            .split_once("prepared statement \"")
            .is_some_and(|(_, rest)| named(rest))
}

/// Whether `message` is one of tokio-postgres's own errors about a statement, raised on the
/// client with no server error and the connection still open: a wrong number of parameters, a
/// value or a text it cannot encode (a NUL byte), a row it cannot decode, a reply it did not
/// expect (`COPY` sent as a query). diesel-async reports them as `UnableToSendCommand`, as it
/// does a lost connection; they say nothing about the server.
pub(crate) fn client_side(message: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "error encoding message to server",
        "error serializing parameter ",
        "error deserializing column ",
        "invalid column ",
        "unexpected message from server",
        "query returned an unexpected number of rows",
    ];
    PREFIXES.iter().any(|prefix| message.starts_with(prefix))
        || (message.starts_with("expected ") && message.contains(" parameters but got "))
}

impl Failure {
    /// What `error` means, given whether the connection it came from is now `broken` (closed,
    /// or its transaction state lost).
    pub(crate) fn of(error: &DieselError, broken: bool) -> Failure {
        let DieselError::DatabaseError(kind, info) = error else {
            return Failure::Statement;
        };
        match kind {
            DatabaseErrorKind::UnableToSendCommand if !broken && client_side(info.message()) => {
                return Failure::Statement;
            }
            DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection => {
                return Failure::Unreachable;
            }
            _ => {}
        }
        match known(error) {
            Some(known) => known.failure,
            None if broken => Failure::Unreachable,
            None => Failure::Statement,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn server_errors_are_read_as_the_table_says() {
        use DatabaseErrorKind::*;
        let cases = [
            (
                ReadOnlyTransaction,
                "cannot execute INSERT in a read-only transaction",
                false,
                Failure::RefusedAsWrite,
            ),
            (
                SerializationFailure,
                "canceling statement due to conflict with recovery",
                false,
                Failure::RecoveryConflict,
            ),
            (
                SerializationFailure,
                "terminating connection due to conflict with recovery",
                true,
                Failure::RecoveryConflict,
            ),
            (
                Unknown,
                "canceling statement due to conflict with recovery",
                false,
                Failure::RecoveryConflict,
            ),
            (
                SerializationFailure,
                "could not serialize access due to concurrent update",
                false,
                Failure::Statement,
            ),
            (
                Unknown,
                "terminating connection due to administrator command",
                true,
                Failure::Unreachable,
            ),
            (
                Unknown,
                "terminating connection due to unexpected postmaster exit",
                false,
                Failure::Unreachable,
            ),
            (
                Unknown,
                "terminating connection because of crash of another server process",
                false,
                Failure::Unreachable,
            ),
            (
                Unknown,
                "the database system is shutting down",
                false,
                Failure::Unreachable,
            ),
            (
                Unknown,
                "the database system is in recovery mode",
                false,
                Failure::Unreachable,
            ),
            (
                UnableToSendCommand,
                "connection closed",
                false,
                Failure::Unreachable,
            ),
            (ClosedConnection, "", false, Failure::Unreachable),
            (
                UnableToSendCommand,
                "error communicating with the server: Connection reset by peer (os error 104)",
                false,
                Failure::Unreachable,
            ),
            // tokio-postgres's own errors about the statement: the server is fine.
            (
                UnableToSendCommand,
                "expected 1 parameters but got 0",
                false,
                Failure::Statement,
            ),
            (
                UnableToSendCommand,
                "error encoding message to server: nul byte found in provided data",
                false,
                Failure::Statement,
            ),
            (
                UnableToSendCommand,
                "unexpected message from server",
                false,
                Failure::Statement,
            ),
            (
                UnableToSendCommand,
                "expected 1 parameters but got 0",
                true,
                Failure::Unreachable,
            ),
            (
                UnableToSendCommand,
                "expected to be connected",
                false,
                Failure::Unreachable,
            ),
            (
                UniqueViolation,
                "duplicate key value violates unique constraint",
                false,
                Failure::Statement,
            ),
            (
                Unknown,
                "relation \"nope\" does not exist",
                false,
                Failure::Statement,
            ),
            (
                Unknown,
                "relation \"nope\" does not exist",
                true,
                Failure::Unreachable,
            ),
        ];
        for (kind, message, broken, expected) in cases {
            assert_eq!(
                Failure::of(&db(kind, message), broken),
                expected,
                "{kind:?} {message:?} broken={broken}"
            );
        }
        assert_eq!(
            Failure::of(&DieselError::NotFound, false),
            Failure::Statement
        );
        assert_eq!(
            Failure::of(&DieselError::NotFound, true),
            Failure::Statement
        );
    }

    #[test]
    fn lost_named_statements_are_told_from_a_users_own() {
        use DatabaseErrorKind::*;
        for (kind, message, lost) in [
            (Unknown, "prepared statement \"s12\" does not exist", true),
            (Unknown, "prepared statement \"s0\" already exists", true),
            (
                Unknown,
                "prepared statement \"typeinfo\" does not exist",
                true,
            ),
            (
                Unknown,
                "bind message supplies 1 parameters, but prepared statement \"s7\" requires 2",
                true,
            ),
            (
                Unknown,
                "prepared statement \"my_plan\" does not exist",
                false,
            ),
            (Unknown, "prepared statement \"s\" does not exist", false),
            (Unknown, "relation \"s1\" does not exist", false),
            (
                UniqueViolation,
                "prepared statement \"s1\" already exists",
                false,
            ),
        ] {
            assert_eq!(
                lost_named_statement(&db(kind, message)),
                lost,
                "{kind:?} {message:?}"
            );
        }
    }

    #[test]
    fn every_known_error_names_its_sqlstate() {
        for known in KNOWN {
            assert_eq!(known.sqlstate.len(), 5, "{known:?}");
            assert!(known.kind.is_some() || known.message.is_some(), "{known:?}");
        }
    }
}
