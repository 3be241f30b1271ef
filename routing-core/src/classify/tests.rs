use super::*;

mod api;
mod functions;
mod hints;
mod statements;

fn classify(sql: &str) -> Classification {
    Classifier::new().classify(sql)
}

#[track_caller]
fn read(sql: &str) {
    assert_eq!(classify(sql), Classification::Read, "{sql}");
}

#[track_caller]
fn write(sql: &str, reason: WriteReason) {
    assert_eq!(classify(sql), Classification::Write(reason), "{sql}");
}

fn stmt(k: &str) -> WriteReason {
    WriteReason::Statement(k.into())
}

fn unknown(n: &str) -> WriteReason {
    WriteReason::UnknownFunction(n.into())
}

fn primary(n: &str) -> WriteReason {
    WriteReason::PrimaryFunction(n.into())
}

fn lock(c: &'static str) -> WriteReason {
    WriteReason::LockingClause(c)
}

fn cte(k: &'static str) -> WriteReason {
    WriteReason::DataModifyingCte(k)
}

// ---- lists -------------------------------------------------------------

fn assert_sorted_lowercase(list: &[&str]) {
    for w in list.windows(2) {
        assert!(w[0] < w[1], "not sorted or duplicated: {} {}", w[0], w[1]);
    }
    for w in list {
        assert!(
            !w.is_empty()
                && w.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
            "{w}"
        );
    }
}

#[test]
fn builtin_lists_are_sorted_lowercase_and_disjoint() {
    assert_sorted_lowercase(builtins::REPLICA_SAFE);
    assert_sorted_lowercase(builtins::PRIMARY_ONLY);
    assert_sorted_lowercase(builtins::PRIMARY_ONLY_PREFIXES);
    for name in builtins::PRIMARY_ONLY {
        assert!(
            builtins::REPLICA_SAFE.binary_search(name).is_err(),
            "{name}"
        );
    }
    for name in builtins::REPLICA_SAFE {
        assert!(
            !builtins::PRIMARY_ONLY_PREFIXES
                .iter()
                .any(|p| name.starts_with(p)),
            "{name}"
        );
    }
    assert!(builtins::REPLICA_SAFE.len() > 2000);
}

#[test]
fn keyword_lists_are_sorted_lowercase() {
    assert_sorted_lowercase(keywords::KEYWORDS);
    assert_sorted_lowercase(keywords::NOT_FUNCTIONS);
    for w in keywords::NOT_FUNCTIONS {
        assert!(keywords::KEYWORDS.binary_search(w).is_ok(), "{w}");
    }
    for w in scan::WRITE_STATEMENTS.windows(2) {
        assert!(w[0] < w[1]);
    }
}
