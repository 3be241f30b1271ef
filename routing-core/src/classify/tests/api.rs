//! The builder methods, several statements, and the reasons reported.

use super::*;

#[test]
fn display() {
    for (reason, text) in [
        (stmt("INSERT"), "write statement INSERT"),
        (lock("FOR UPDATE"), "locking clause FOR UPDATE"),
        (cte("INSERT"), "data-modifying INSERT in WITH"),
        (WriteReason::SelectInto, "SELECT INTO"),
        (
            primary("nextval"),
            "function nextval must run on the primary",
        ),
        (unknown("my_fn"), "unknown function my_fn"),
        (WriteReason::Hint, "routing:primary hint"),
        (WriteReason::Unrecognized, "unrecognized statement"),
    ] {
        assert_eq!(reason.to_string(), text);
    }
}

#[test]
fn is_read() {
    assert!(Classification::Read.is_read());
    assert!(!Classification::Write(WriteReason::Hint).is_read());
}

#[test]
fn long_and_deep_input() {
    let mut sql = String::from("SELECT ");
    for _ in 0..100 {
        sql.push_str("coalesce(");
    }
    sql.push('1');
    for _ in 0..100 {
        sql.push_str(", 2)");
    }
    read(&sql);
    sql.push_str(" FROM t t(a)");
    read(&sql);
    let many = "SELECT lower(x) FROM t; ".repeat(200);
    read(&many);
}

#[test]
fn never_panics() {
    const PIECES: &[&str] = &[
        "SELECT",
        "select",
        "WITH",
        "x",
        "(",
        ")",
        ",",
        ";",
        ".",
        "::",
        "'",
        "''",
        "\"",
        "$$",
        "$a$",
        "$1",
        "E'",
        "\\",
        "U&",
        "--",
        "/*",
        "*/",
        "\n",
        " ",
        "é",
        "😀",
        "FOR",
        "UPDATE",
        "NO",
        "KEY",
        "SHARE",
        "AS",
        "INTO",
        "nextval",
        "f",
        "1",
        ".5",
        "0x",
        "e+",
        "EXPLAIN",
        "ANALYZE",
        "routing:replica",
        "routing:primary",
        "DISTINCT",
        "ON",
        "OPERATOR",
        "[",
        "]",
        "+",
        "-",
        "*",
        "/",
        "&",
        "&'",
        "&\"",
        "INTERVAL",
        "SECOND",
        "MATERIALIZED",
        "NOT",
    ];
    let classifier = Classifier::new().replica_safe_functions(["f"]);
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut sql = String::new();
    for _ in 0..20_000 {
        sql.clear();
        let len = next() % 24;
        for _ in 0..len {
            let i = usize::try_from(next() % PIECES.len() as u64).unwrap_or(0);
            sql.push_str(PIECES[i]);
            if next() % 3 == 0 {
                sql.push(' ');
            }
        }
        let _ = classifier.classify(&sql);
    }
    // Every prefix of a complex statement.
    let text = "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n+1 FROM t) \
                SELECT E'\\'', $q$ $ $q$, \"é\"\"x\", U&'\\00e9', f(x)::numeric(3), /* a /* b */ */ \
                nextval('s') -- done\n FROM t FOR NO KEY UPDATE; EXPLAIN (ANALYZE off) SELECT 1";
    for (i, _) in text.char_indices() {
        let _ = classifier.classify(&text[..i]);
    }
}
