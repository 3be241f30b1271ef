//! The `routing:primary` and `routing:replica` comments.

use super::*;

#[test]
fn primary_hint() {
    write("/* routing:primary */ SELECT 1", WriteReason::Hint);
    write("SELECT 1 /*routing:primary*/", WriteReason::Hint);
    write("SELECT 1 -- routing:primary", WriteReason::Hint);
    write("SELECT 1 /*  ROUTING:PRIMARY  */", WriteReason::Hint);
    write(
        "SELECT 1; /* routing:primary */ SELECT 2",
        WriteReason::Hint,
    );
    // Only a whole comment is a hint.
    read("SELECT 1 /* see routing:primary */");
    read("SELECT '/* routing:primary */'");
}

#[test]
fn replica_hint_overrides_only_unknowns() {
    let c = Classifier::new();
    assert!(c.classify("/* routing:replica */ SELECT my_fn()").is_read());
    assert!(c.classify("SELECT my_fn() -- routing:replica").is_read());
    assert!(
        c.classify("SELECT public.a(), b() /* routing:replica */")
            .is_read()
    );
    for (sql, reason) in [
        (
            "/* routing:replica */ INSERT INTO t VALUES (1)",
            stmt("INSERT"),
        ),
        ("/* routing:replica */ DELETE FROM t", stmt("DELETE")),
        ("/* routing:replica */ CREATE TABLE t ()", stmt("CREATE")),
        (
            "/* routing:replica */ SELECT 1 FOR UPDATE",
            lock("FOR UPDATE"),
        ),
        (
            "/* routing:replica */ WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM x",
            cte("UPDATE"),
        ),
        (
            "/* routing:replica */ SELECT 1 INTO t",
            WriteReason::SelectInto,
        ),
        (
            "/* routing:replica */ SELECT nextval('s')",
            primary("nextval"),
        ),
        ("/* routing:replica */ SELECT 'x", WriteReason::Unrecognized),
        (
            "/* routing:replica */ EXPLAIN ANALYZE SELECT 1",
            stmt("EXPLAIN ANALYZE"),
        ),
        (
            "/* routing:replica */ /* routing:primary */ SELECT 1",
            WriteReason::Hint,
        ),
    ] {
        assert_eq!(c.classify(sql), Classification::Write(reason), "{sql}");
    }
    // A real write after an unknown function is reported when the hint drops
    // the unknown function, wherever the hint is.
    assert_eq!(
        c.classify("SELECT my_fn() FROM t FOR UPDATE /* routing:replica */"),
        Classification::Write(lock("FOR UPDATE"))
    );
    assert_eq!(
        c.classify("SELECT my_fn() FROM t FOR UPDATE"),
        Classification::Write(unknown("my_fn"))
    );
}
