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

// Sortedness and lowercase names are checked at compile time (`data.rs`).

#[test]
fn builtin_lists_are_disjoint() {
    for name in data::PRIMARY_ONLY {
        assert!(data::REPLICA_SAFE.binary_search(name).is_err(), "{name}");
    }
    for name in data::REPLICA_SAFE {
        assert!(
            !data::PRIMARY_ONLY_PREFIXES
                .iter()
                .any(|p| name.starts_with(p)),
            "{name}"
        );
    }
    assert!(data::REPLICA_SAFE.len() > 2000);
}

#[test]
fn not_functions_follow_the_keyword_categories() {
    for w in data::NOT_FUNCTIONS {
        assert!(data::KEYWORDS.binary_search(w).is_ok(), "{w}");
    }
    // Reserved, column-name, type/function-name, unreserved tagged `paren`,
    // and a column-name keyword of a later release.
    for w in ["select", "exists", "left", "over", "json_table"] {
        assert!(data::NOT_FUNCTIONS.binary_search(&w).is_ok(), "{w}");
    }
    // Unreserved keywords, one of a later release.
    for w in ["abort", "name", "absent"] {
        assert!(data::KEYWORDS.binary_search(&w).is_ok(), "{w}");
        assert!(data::NOT_FUNCTIONS.binary_search(&w).is_err(), "{w}");
    }
}
