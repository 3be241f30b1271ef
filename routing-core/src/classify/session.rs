//! Statements that change a session's state beyond their transaction: whatever the next user of
//! the same server connection would otherwise inherit.

use super::Classifier;
use super::lexer::{Kind, Lexer, Token};

/// Functions whose call leaves state in the session: settings (`set_config`, unless the
/// caller asks for a local one, which cannot be told from the text), session advisory locks,
/// the random seed, named dblink connections. Sorted.
const SESSION_FUNCTIONS: &[&str] = &[
    "dblink_connect",
    "dblink_connect_u",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "set_config",
    "setseed",
];

/// Leading keywords of statements that change the session. Sorted, uppercase.
const SESSION_STATEMENTS: &[&str] = &[
    "DEALLOCATE",
    "DECLARE",
    "DISCARD",
    // A `DO` block's body is procedural code the classifier does not read.
    "DO",
    "LISTEN",
    "LOAD",
    "PREPARE",
    "RESET",
    "UNLISTEN",
];

/// What a statement's text leaves in its session beyond itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionEffects {
    /// Settings, locks, listeners, prepared statements, cursors, temporary objects: state a
    /// transaction pooler would hand to its other clients.
    pub(crate) state: bool,
    /// A transaction block left open: a transaction pooler keeps the server connection for
    /// this client until it ends, but the next user of this session would inherit it.
    pub(crate) open_transaction: bool,
}

impl SessionEffects {
    /// Whether the session must not serve anyone else.
    pub(crate) fn any(self) -> bool {
        self.state || self.open_transaction
    }
}

impl Classifier {
    /// Whether `sql` (one statement or several) may change the state of the session that runs
    /// it beyond its transaction: `SET` (not `SET LOCAL`, `SET TRANSACTION` or
    /// `SET CONSTRAINTS`), `RESET`, `LISTEN`/`UNLISTEN`, `PREPARE`/`DEALLOCATE`, `DECLARE`,
    /// `DISCARD`, `LOAD`, temporary tables, views, sequences and functions (`TEMP`, or made in
    /// `pg_temp`), session advisory locks, `set_config`, `setseed` (named plainly or quoted),
    /// named dblink connections, `DO` blocks, whose bodies it does not read, and a transaction
    /// block the text leaves open (`BEGIN` or `START TRANSACTION` without a later `COMMIT`,
    /// `END`, `ROLLBACK` or `ABORT`, or ended `AND CHAIN`): a session returned to its pool inside
    /// it would run the next user's statements in a transaction nobody commits. Text that
    /// cannot be read counts as changing the session.
    #[must_use]
    pub fn changes_session(&self, sql: &str) -> bool {
        self.session_effects(sql).any()
    }

    /// What `sql` leaves in its session, told apart (see [`Classifier::changes_session`]).
    pub(crate) fn session_effects(&self, sql: &str) -> SessionEffects {
        const STATE: SessionEffects = SessionEffects {
            state: true,
            open_transaction: false,
        };
        let mut lexer = Lexer::new(sql);
        let mut at_start = true;
        let mut previous: Option<Token<'_>> = None;
        let mut open_transaction = false;
        loop {
            let token = match lexer.next_plain() {
                Ok(Some(token)) => token,
                Ok(None) => {
                    return SessionEffects {
                        state: false,
                        open_transaction,
                    };
                }
                Err(_) => return STATE,
            };
            if at_start && token.kind == Kind::Ident {
                if let Some(open) = transaction_control(token, &lexer) {
                    open_transaction = open;
                }
            }
            match token.kind {
                Kind::Semi => {
                    at_start = true;
                    previous = None;
                    continue;
                }
                Kind::LParen if at_start => continue,
                Kind::Ident if at_start && statement_changes_session(token, &mut lexer) => {
                    return STATE;
                }
                // `SELECT ... INTO TEMP t`, `CREATE TEMP TABLE`, `CREATE GLOBAL TEMPORARY ...`,
                // `CREATE OR REPLACE TEMP VIEW`.
                Kind::Ident
                    if (token.is_kw("TEMP") || token.is_kw("TEMPORARY"))
                        && previous.is_some_and(|p| {
                            p.is_kw("INTO")
                                || p.is_kw("CREATE")
                                || p.is_kw("REPLACE")
                                || p.is_kw("GLOBAL")
                                || p.is_kw("LOCAL")
                        }) =>
                {
                    return STATE;
                }
                // Anything named in the session's own schema: `CREATE TABLE pg_temp.t`,
                // `CREATE FUNCTION pg_temp.f()`.
                Kind::Dot if previous.is_some_and(|p| names(p, "pg_temp")) => return STATE,
                Kind::LParen if previous.is_some_and(is_session_function) => return STATE,
                _ => {}
            }
            at_start = false;
            previous = Some(token);
        }
    }
}

/// Whether the statement led by `lead` changes the session; reads ahead on a copy of `lexer`.
fn statement_changes_session(lead: Token<'_>, lexer: &mut Lexer<'_>) -> bool {
    let upper = |w: &str| w.to_ascii_uppercase();
    if SESSION_STATEMENTS
        .binary_search(&upper(lead.text).as_str())
        .is_ok()
    {
        return true;
    }
    if lead.is_kw("SET") {
        let next = lexer.clone().next_plain().ok().flatten();
        return !next
            .is_some_and(|t| t.is_kw("LOCAL") || t.is_kw("TRANSACTION") || t.is_kw("CONSTRAINTS"));
    }
    false
}

/// What the statement led by `lead` does to the session's transaction block: `Some(true)` when
/// it opens one (`BEGIN`, `START TRANSACTION`, an end `AND CHAIN`), `Some(false)` when it ends
/// it (`COMMIT`, `END`, `ROLLBACK`, `ABORT`), `None` otherwise (a rollback to a savepoint, the
/// end of a prepared transaction, any other statement). Reads ahead on a copy of `lexer`.
fn transaction_control(lead: Token<'_>, lexer: &Lexer<'_>) -> Option<bool> {
    let mut ahead = lexer.clone();
    let mut next = move || ahead.next_plain().ok().flatten();
    if lead.is_kw("BEGIN") {
        return Some(true);
    }
    if lead.is_kw("START") {
        return next()
            .is_some_and(|t| t.is_kw("TRANSACTION"))
            .then_some(true);
    }
    if !(lead.is_kw("COMMIT") || lead.is_kw("END") || lead.is_kw("ROLLBACK") || lead.is_kw("ABORT"))
    {
        return None;
    }
    // `[WORK | TRANSACTION] [AND [NO] CHAIN]`, `ROLLBACK [WORK] TO [SAVEPOINT] s`,
    // `COMMIT PREPARED 'id'`.
    let mut and = false;
    let mut no = false;
    while let Some(token) = next() {
        if token.kind == Kind::Semi {
            break;
        }
        if token.is_kw("TO") || token.is_kw("PREPARED") {
            return None;
        }
        if token.is_kw("CHAIN") && and {
            return Some(!no);
        }
        and |= token.is_kw("AND");
        no = and && token.is_kw("NO");
    }
    Some(false)
}

/// Whether `token` names `name` (lowercase): an unquoted word in any case, or exactly quoted.
fn names(token: Token<'_>, name: &str) -> bool {
    match token.kind {
        Kind::Ident => token.text.eq_ignore_ascii_case(name),
        Kind::Quoted => token.text == name,
        _ => false,
    }
}

/// Whether `token` names one of [`SESSION_FUNCTIONS`] (a quoted name only as PostgreSQL folds
/// it: in lowercase).
fn is_session_function(token: Token<'_>) -> bool {
    let name = match token.kind {
        Kind::Ident if token.text.len() <= 32 => token.text.to_ascii_lowercase(),
        Kind::Quoted => token.text.to_owned(),
        _ => return false,
    };
    SESSION_FUNCTIONS.binary_search(&name.as_str()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_changes_are_found() {
        let classifier = Classifier::new();
        for sql in [
            "SET statement_timeout = '4321ms'",
            "set search_path to app",
            "SET SESSION statement_timeout = 1",
            "SET ROLE app",
            "RESET ALL",
            "LISTEN jobs",
            "UNLISTEN *",
            "PREPARE q AS SELECT 1",
            "DEALLOCATE q",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "DISCARD ALL",
            "CREATE TEMP TABLE t (a int)",
            "create temporary table t (a int)",
            "CREATE GLOBAL TEMPORARY TABLE t (a int)",
            "SELECT 1 INTO TEMP t",
            "SELECT set_config('x.y', 'z', false)",
            "SELECT pg_advisory_lock(42)",
            "SELECT pg_try_advisory_lock_shared(1, 2)",
            "select setseed(0.5)",
            "INSERT INTO t VALUES (1); SET work_mem = '1MB'",
            "(SELECT pg_advisory_lock(1))",
            "SELECT \"set_config\"('statement_timeout', '1ms', false)",
            "SELECT * FROM pg_catalog.\"pg_advisory_lock\"(1)",
            "DO $$ BEGIN PERFORM set_config('x.y', 'z', false); END $$",
            "CREATE TABLE pg_temp.t (a int)",
            "CREATE FUNCTION \"pg_temp\".f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "SELECT 'unterminated",
            "BEGIN",
            "begin transaction isolation level serializable",
            "START TRANSACTION READ ONLY",
            "BEGIN; INSERT INTO t VALUES (1)",
            "BEGIN; INSERT INTO t VALUES (1); COMMIT AND CHAIN",
            "BEGIN; SAVEPOINT s; ROLLBACK TO SAVEPOINT s",
            "COMMIT; BEGIN",
            "START TRANSACTION; COMMIT PREPARED 'x'",
        ] {
            assert!(classifier.changes_session(sql), "{sql}");
        }
    }

    #[test]
    fn an_open_transaction_is_told_from_session_state() {
        let classifier = Classifier::new();
        let open = SessionEffects {
            state: false,
            open_transaction: true,
        };
        assert_eq!(classifier.session_effects("BEGIN"), open);
        assert_eq!(
            classifier.session_effects("START TRANSACTION; SELECT 1"),
            open
        );
        assert!(
            classifier
                .session_effects("BEGIN; SET work_mem = '1MB'")
                .state
        );
        assert!(!classifier.session_effects("BEGIN; COMMIT").any());
    }

    #[test]
    fn ordinary_statements_leave_the_session_alone() {
        let classifier = Classifier::new();
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "SET LOCAL statement_timeout = 1",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT 'SET x = 1', \"temp\" FROM temp_things",
            "SELECT \"SET_CONFIG\"('x.y', 'z', false)",
            "SELECT pg_temp_things.a FROM pg_temp_things",
            "CREATE TABLE t (a int)",
            "SELECT nextval('s')",
            "-- SET x = 1\nSELECT 1",
            "",
            "BEGIN; INSERT INTO t VALUES (1); COMMIT",
            "begin; update t set a = 1; end",
            "START TRANSACTION; SELECT 1; ROLLBACK",
            "BEGIN; SAVEPOINT s; ROLLBACK TO s; ABORT",
            "BEGIN; COMMIT AND NO CHAIN",
            "COMMIT",
            "SELECT 'BEGIN'",
            "SELECT begin FROM t",
        ] {
            assert!(!classifier.changes_session(sql), "{sql}");
        }
    }
}
