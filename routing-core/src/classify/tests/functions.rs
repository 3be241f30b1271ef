//! Function calls: which parentheses are calls, and how each function is judged.

use super::*;

#[test]
fn builtin_read_safe_functions() {
    read("SELECT lower('A'), upper('a'), length('x'), now(), count(*), sum(1), coalesce(1, 2)");
    read("SELECT date_trunc('day', now()), to_char(now(), 'YYYY'), json_build_object('a', 1)");
    read("SELECT array_agg(x ORDER BY x) FROM t");
    read("SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t");
    read("SELECT count(*) FILTER (WHERE a > 1) FROM t");
    read("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY a) FROM t");
    read("SELECT random(), clock_timestamp(), gen_random_uuid(), pg_sleep(0)");
    read("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), pg_backend_pid(), version()");
    read("SELECT pg_catalog.lower('A'), \"lower\"('B')");
    read("SELECT information_schema._pg_truetypid(a, t) FROM x");
    read("SELECT LOWER('A'), Now()");
}

#[test]
fn keyword_constructs_are_not_calls() {
    read("SELECT 1 WHERE 1 IN (1, 2) AND EXISTS (SELECT 1) AND NOT (false) OR 2 = ANY (ARRAY[1])");
    read(
        "SELECT CAST(x AS numeric(10, 2)), COALESCE(a, b), NULLIF(a, b), GREATEST(1, 2), LEAST(1, 2) FROM t",
    );
    read(
        "SELECT EXTRACT(year FROM now()), POSITION('a' IN 'abc'), TRIM(BOTH ' ' FROM x), OVERLAY(x PLACING 'y' FROM 1) FROM t",
    );
    read("SELECT ROW(1, 2), ARRAY(SELECT 1), CASE WHEN (a) THEN (b) ELSE (c) END FROM t");
    read("SELECT a FROM t GROUP BY GROUPING SETS ((a), (b)), CUBE (a, b), ROLLUP (a)");
    read("SELECT DISTINCT ON (a) a FROM t ORDER BY (a) DESC LIMIT (1) OFFSET (2)");
    read("SELECT * FROM a JOIN b USING (id) JOIN LATERAL (SELECT 1) l ON (true)");
    read("SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (1)");
    read("SELECT * FROM t TABLESAMPLE bernoulli(5)");
    read("SELECT CURRENT_TIMESTAMP(3), LOCALTIMESTAMP(2), CURRENT_TIME(1)");
    read("SELECT x FROM t WINDOW w AS (PARTITION BY a)");
    read(
        "SELECT a FROM t UNION (SELECT b FROM u) INTERSECT (SELECT c FROM v) EXCEPT (SELECT d FROM w)",
    );
    read(
        "SELECT a FROM t WHERE a BETWEEN (1) AND (2) AND b LIKE ('x') AND c ILIKE ('y') AND d IS DISTINCT FROM (e)",
    );
    read("SELECT a FROM t FETCH FIRST (5) ROWS ONLY");
    read("SELECT INTERVAL '1' SECOND(3), x::interval day to second(3), INTERVAL(2) '1 s'");
    read("SELECT xmlelement(NAME a, xmlattributes(1 AS b)), xmlforest(a, b) FROM t");
    read("SELECT a AT TIME ZONE ('UTC') FROM t");
    read("SELECT (a, b) OVERLAPS (c, d) FROM t");
    read("SELECT left('abc', 1), right('abc', 1)");
}

#[test]
fn type_modifiers_are_not_calls() {
    read("SELECT x::numeric(10,2)");
    read(
        "SELECT x::varchar(255), x::character varying(10), x::timestamp(3), x::time(3) with time zone",
    );
    read("SELECT x::bit(8), x::float(24), x::decimal(5), x::char(3), x::interval(2)");
    read("SELECT CAST(x AS character varying(10)), CAST(y AS timestamptz(3))");
    read("SELECT x::pg_catalog.numeric(5,1), x::public.mytype(3)");
    read("SELECT varchar(10) 'abc', numeric(4, 1) '1.5'");
}

#[test]
fn aliases_with_column_lists_are_not_calls() {
    read("SELECT * FROM generate_series(1,3) AS g(i)");
    read("SELECT * FROM unnest(ARRAY[1,2]) t(a)");
    read("SELECT * FROM unnest(ARRAY[1,2]) WITH ORDINALITY AS t(a, n)");
    read("SELECT * FROM users u(a, b)");
    read("SELECT * FROM public.users u(a, b)");
    read(r#"SELECT * FROM "users" "u"("a")"#);
    read("SELECT * FROM (VALUES (1, 2)) v(a, b)");
    read("SELECT * FROM (SELECT 1) s(a)");
    read("SELECT * FROM json_to_record('{}') AS x(a int, b text, c timestamptz(3))");
    read("SELECT * FROM ROWS FROM (generate_series(1, 2), unnest(ARRAY[1])) AS r(a, b)");
}

#[test]
fn cte_column_lists_are_not_calls() {
    read("WITH x(a) AS (SELECT 1) SELECT a FROM x");
    read("WITH x(a) AS (SELECT 1), y(b) AS (SELECT 2) SELECT * FROM x, y");
    read("WITH x(a) AS MATERIALIZED (SELECT 1) SELECT a FROM x");
    read("WITH x AS (SELECT 1), y(b, c) AS NOT MATERIALIZED (SELECT 2, 3) SELECT * FROM y");
    read("SELECT * FROM (WITH z(q) AS (SELECT 1) SELECT q FROM z) s");
    // A call after a comma in a WITH query is still a call.
    write(
        "WITH x AS (SELECT 1) SELECT a, my_fn(a) FROM x",
        unknown("my_fn"),
    );
}

#[test]
fn calls_after_parenthesised_expressions() {
    write(
        "SELECT DISTINCT ON (a) nextval('s') FROM t",
        primary("nextval"),
    );
    write(
        "SELECT a OPERATOR(pg_catalog.+) my_fn(b) FROM t",
        unknown("my_fn"),
    );
}

#[test]
fn primary_only_builtins() {
    write("SELECT pg_advisory_lock(1)", primary("pg_advisory_lock"));
    write(
        "SELECT pg_try_advisory_xact_lock(1, 2)",
        primary("pg_try_advisory_xact_lock"),
    );
    write("SELECT setval('s', 1)", primary("setval"));
    write("SELECT currval('s')", primary("currval"));
    write(
        "SELECT set_config('a.b', 'c', false)",
        primary("set_config"),
    );
    write("SELECT pg_notify('c', 'x')", primary("pg_notify"));
    write("SELECT txid_current()", primary("txid_current"));
    write("SELECT pg_current_wal_lsn()", primary("pg_current_wal_lsn"));
    write("SELECT lo_create(0)", primary("lo_create"));
    write("SELECT pg_stat_reset()", primary("pg_stat_reset"));
    write(
        "SELECT pg_terminate_backend(1)",
        primary("pg_terminate_backend"),
    );
    write(
        "SELECT pg_catalog.nextval('s')",
        primary("pg_catalog.nextval"),
    );
    write("SELECT NEXTVAL('s')", primary("nextval"));
    write(
        r#"SELECT * FROM t WHERE id = (SELECT nextval('s'))"#,
        primary("nextval"),
    );
    write(
        "SELECT public.dblink_exec('x')",
        primary("public.dblink_exec"),
    );
    write("VALUES (nextval('s'))", primary("nextval"));
    // Families, including members newer than the generated list.
    write(
        "SELECT pg_advisory_future(1)",
        primary("pg_advisory_future"),
    );
}

#[test]
fn unknown_functions() {
    write("SELECT public.my_fn()", unknown("public.my_fn"));
    write("SELECT my_fn(1)", unknown("my_fn"));
    write(r#"SELECT "My Fn"(1)"#, unknown("My Fn"));
    write(r#"SELECT "a""b"(1)"#, unknown("a\"b"));
    write(r#"SELECT "LOWER"('x')"#, unknown("LOWER"));
    write("SELECT app.lower('x')", unknown("app.lower"));
    write("SELECT * FROM t WHERE f(a) > 1", unknown("f"));
    write("SELECT a FROM t ORDER BY my_rank(a)", unknown("my_rank"));
    write(
        "SELECT * FROM a CROSS JOIN LATERAL my_srf(a.x)",
        unknown("my_srf"),
    );
    write(
        "SELECT query_to_xml('DELETE FROM t', true, true, '')",
        unknown("query_to_xml"),
    );
    write("SELECT db.app.fn()", unknown("app.fn"));
    // The first offending function decides.
    write("SELECT f1(), nextval('s')", unknown("f1"));
    write(
        "/* routing:replica */ SELECT f1(), nextval('s')",
        primary("nextval"),
    );
    write("SELECT f1(), f2()", unknown("f1"));
}

#[test]
fn user_registered_functions() {
    let c = Classifier::new()
        .replica_safe_functions([
            "my_fn",
            "App.Search",
            "\"Quoted\".\"Fn\"",
            "with_args(int, text)",
        ])
        .primary_functions(vec!["touch".to_owned(), "audit.log_access".to_owned()]);
    assert!(c.classify("SELECT my_fn(1)").is_read());
    assert!(c.classify("SELECT MY_FN(1)").is_read());
    assert!(c.classify("SELECT other.my_fn(1)").is_read());
    assert!(c.classify("SELECT app.search('x')").is_read());
    assert!(c.classify("SELECT search('x')").is_read());
    assert!(c.classify(r#"SELECT "app"."search"('x')"#).is_read());
    assert!(c.classify("SELECT quoted.fn()").is_read());
    assert!(c.classify("SELECT with_args(1, 'x')").is_read());
    assert_eq!(
        c.classify("SELECT other.search('x')"),
        Classification::Write(unknown("other.search"))
    );
    assert_eq!(
        c.classify("SELECT touch($1)"),
        Classification::Write(primary("touch"))
    );
    assert_eq!(
        c.classify("SELECT audit.log_access($1)"),
        Classification::Write(primary("audit.log_access"))
    );
    assert_eq!(
        c.classify("SELECT log_access($1)"),
        Classification::Write(primary("log_access"))
    );
    assert!(
        c.classify("SELECT other.log_access($1)")
            .is_write_reason_unknown()
    );
}

impl Classification {
    fn is_write_reason_unknown(&self) -> bool {
        matches!(self, Classification::Write(WriteReason::UnknownFunction(_)))
    }
}

#[test]
fn primary_functions_win_over_everything() {
    let c = Classifier::new()
        .replica_safe_functions(["dual", "nextval"])
        .primary_functions(["dual", "lower"]);
    assert_eq!(
        c.classify("SELECT dual()"),
        Classification::Write(primary("dual"))
    );
    // A built-in can be sent to the primary...
    assert_eq!(
        c.classify("SELECT lower('x')"),
        Classification::Write(primary("lower"))
    );
    // ...but a primary-only built-in cannot be made replica-safe.
    assert_eq!(
        c.classify("SELECT nextval('s')"),
        Classification::Write(primary("nextval"))
    );
    assert_eq!(
        c.classify("/* routing:replica */ SELECT dual()"),
        Classification::Write(primary("dual"))
    );
}

#[test]
fn empty_registrations_are_ignored() {
    let c = Classifier::new().replica_safe_functions(["", "  ", "()"]);
    assert_eq!(
        c.classify("SELECT f()"),
        Classification::Write(unknown("f"))
    );
}
