use super::*;

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
    for w in WRITE_STATEMENTS.windows(2) {
        assert!(w[0] < w[1]);
    }
}

// ---- statement kinds ---------------------------------------------------

#[test]
fn diesel_reads() {
    read(r#"SELECT "users"."id", "users"."name" FROM "users" WHERE ("users"."id" = $1) LIMIT $2"#);
    read(r#"SELECT COUNT(*) FROM "users""#);
    read(r#"SELECT lower("users"."name") FROM "users""#);
    read(r#"SELECT EXISTS (SELECT "users"."id" FROM "users")"#);
    read("SELECT CURRENT_TIMESTAMP");
    read(
        r#"SELECT "users"."id" FROM "users" INNER JOIN "posts" ON ("posts"."user_id" = "users"."id") WHERE "users"."name" ILIKE $1 ORDER BY "users"."id" DESC LIMIT $2 OFFSET $3"#,
    );
    read(r#"SELECT "users"."id" FROM "users" WHERE "users"."id" IN ($1, $2, $3)"#);
    read(
        r#"SELECT "users"."id" FROM "users" LEFT OUTER JOIN "posts" ON "posts"."user_id" = "users"."id""#,
    );
}

#[test]
fn diesel_writes() {
    write(
        r#"INSERT INTO "users" ("name") VALUES ($1) RETURNING "users"."id", "users"."name""#,
        stmt("INSERT"),
    );
    write(
        r#"UPDATE "users" SET "name" = $1 WHERE ("users"."id" = $2)"#,
        stmt("UPDATE"),
    );
    write(
        r#"DELETE FROM "users" WHERE ("users"."id" = $1)"#,
        stmt("DELETE"),
    );
    write("SELECT nextval($1)", primary("nextval"));
    write(
        r#"INSERT INTO "users" ("name") VALUES ($1) ON CONFLICT DO NOTHING"#,
        stmt("INSERT"),
    );
}

#[test]
fn read_statement_kinds() {
    read("SELECT 1");
    read("select 1");
    read("VALUES (1), (2)");
    read("TABLE users");
    read("SHOW search_path");
    read("show transaction isolation level");
    read("WITH x AS (SELECT 1) SELECT * FROM x");
    read("  \n\t SELECT 1");
}

#[test]
fn write_statement_kinds() {
    for (sql, k) in [
        ("insert into t values (1)", "INSERT"),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "MERGE",
        ),
        ("CREATE TABLE t (id int)", "CREATE"),
        ("alter table t add column x int", "ALTER"),
        ("DROP TABLE t", "DROP"),
        ("TRUNCATE t", "TRUNCATE"),
        ("COPY t TO STDOUT", "COPY"),
        ("GRANT SELECT ON t TO u", "GRANT"),
        ("SET search_path TO app", "SET"),
        ("RESET ALL", "RESET"),
        ("BEGIN", "BEGIN"),
        ("START TRANSACTION READ ONLY", "START"),
        ("COMMIT", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("LOCK TABLE t IN SHARE MODE", "LOCK"),
        ("CALL p()", "CALL"),
        ("DO $$BEGIN PERFORM 1; END$$", "DO"),
        ("VACUUM t", "VACUUM"),
        ("ANALYZE t", "ANALYZE"),
        ("REFRESH MATERIALIZED VIEW v", "REFRESH"),
        ("LISTEN chan", "LISTEN"),
        ("NOTIFY chan, 'x'", "NOTIFY"),
        ("PREPARE q AS SELECT 1", "PREPARE"),
        ("EXECUTE q", "EXECUTE"),
        ("DECLARE c CURSOR FOR SELECT 1", "DECLARE"),
        ("FETCH NEXT FROM c", "FETCH"),
        ("DISCARD ALL", "DISCARD"),
    ] {
        write(sql, stmt(k));
    }
}

#[test]
fn unknown_leading_keyword_is_a_soft_write() {
    write("FROBNICATE t", stmt("FROBNICATE"));
    assert!(classify("/* routing:replica */ FROBNICATE t").is_read());
}

#[test]
fn empty_and_unparsable() {
    write("", WriteReason::Unrecognized);
    write("   ", WriteReason::Unrecognized);
    write(";", WriteReason::Unrecognized);
    write(";;  ;", WriteReason::Unrecognized);
    write("-- just a comment", WriteReason::Unrecognized);
    write("/* nothing */", WriteReason::Unrecognized);
    write("42", WriteReason::Unrecognized);
    write(r#""select" 1"#, WriteReason::Unrecognized);
    write("(", WriteReason::Unrecognized);
    write("( ;", WriteReason::Unrecognized);
    write("EXPLAIN", WriteReason::Unrecognized);
}

#[test]
fn leading_parentheses() {
    read("(SELECT 1) UNION (SELECT 2)");
    read("((SELECT 1))");
    read("(VALUES (1)) ORDER BY 1");
    write("(SELECT 1 FOR UPDATE)", lock("FOR UPDATE"));
}

#[test]
fn several_statements() {
    write("SELECT 1; DELETE FROM t", stmt("DELETE"));
    read("SELECT 1; SELECT 2;");
    read(";;SELECT 1;;");
    write("SELECT 1; SELECT 2 FOR SHARE; SELECT 3", lock("FOR SHARE"));
    write("SET x = 1; SELECT 1", stmt("SET"));
    // The first write in text order is the reason.
    write("SELECT my_fn(); DELETE FROM t", unknown("my_fn"));
}

#[test]
fn explain() {
    read("EXPLAIN SELECT 1");
    read("EXPLAIN VERBOSE SELECT * FROM t");
    read("EXPLAIN (COSTS OFF, FORMAT JSON) SELECT 1");
    read("EXPLAIN (ANALYZE false) SELECT 1");
    read("EXPLAIN (ANALYZE off, BUFFERS) SELECT 1");
    read("EXPLAIN (ANALYZE 0) SELECT 1");
    read("EXPLAIN (ANALYZE 'no') SELECT 1");
    // Only planned, never run: a hot standby accepts it.
    read("EXPLAIN INSERT INTO t VALUES (1)");
    write("EXPLAIN ANALYZE SELECT 1", stmt("EXPLAIN ANALYZE"));
    write("explain analyse select 1", stmt("EXPLAIN ANALYZE"));
    write("EXPLAIN ANALYZE VERBOSE SELECT 1", stmt("EXPLAIN ANALYZE"));
    write("EXPLAIN (ANALYZE) SELECT 1", stmt("EXPLAIN ANALYZE"));
    write(
        "EXPLAIN (ANALYZE, BUFFERS) SELECT 1",
        stmt("EXPLAIN ANALYZE"),
    );
    write(
        "EXPLAIN (FORMAT JSON, ANALYZE TRUE) SELECT 1",
        stmt("EXPLAIN ANALYZE"),
    );
    write("EXPLAIN (ANALYZE on) SELECT 1", stmt("EXPLAIN ANALYZE"));
    write("EXPLAIN (ANALYZE 1) SELECT 1", stmt("EXPLAIN ANALYZE"));
}

// ---- lexer -------------------------------------------------------------

#[test]
fn keywords_inside_literals_and_comments_do_not_count() {
    read("SELECT 'DELETE'");
    read("SELECT 'it''s an UPDATE'");
    read(r#"SELECT "update" FROM t"#);
    read(r#"SELECT "in""to" FROM t"#);
    read("SELECT $$INSERT$$");
    read("SELECT $tag$ FOR UPDATE $tag$");
    read("SELECT $a$ $b$ DELETE $b$ $a$");
    read("SELECT 1 -- DELETE");
    read("SELECT 1 /* FOR UPDATE */");
    read("SELECT 1 /* nested /* INSERT */ still comment DELETE */");
    read(r"SELECT E'\' DELETE'");
    read(r"SELECT e'\\', 'x'");
    read("SELECT U&'\\0041 INSERT'");
    read("SELECT B'1010', X'FF', N'INTO'");
    read("SELECT 1 AS \"nextval\"");
    read("SELECT '-- not a comment'");
    read("SELECT '/* not a comment'");
}

#[test]
fn backslash_is_literal_in_standard_strings() {
    // 'a\' ends at the second quote: the DELETE is outside the literal.
    write(r"SELECT 'a\' DELETE", cte("DELETE"));
    // In an E string the backslash escapes the quote.
    read(r"SELECT E'a\' DELETE'");
}

#[test]
fn bind_parameters_and_dollar_quotes() {
    read("SELECT $1, $2::int, $10");
    read("SELECT $1$2");
    read("SELECT a$b FROM t");
    read("SELECT $_$ INTO $_$");
}

#[test]
fn unterminated() {
    write("SELECT 'abc", WriteReason::Unrecognized);
    write(r#"SELECT "abc"#, WriteReason::Unrecognized);
    write("SELECT $$abc", WriteReason::Unrecognized);
    write("SELECT $x$abc$y$", WriteReason::Unrecognized);
    write("SELECT 1 /* abc", WriteReason::Unrecognized);
    write("SELECT 1 /* /* */", WriteReason::Unrecognized);
    write(r"SELECT E'abc\'", WriteReason::Unrecognized);
}

#[test]
fn numbers_and_operators() {
    read("SELECT 1.5e-3, .5, 1e10, 0x1F, 1_000 FROM t WHERE a <> b AND c >= -1");
    read("SELECT a->>'k', a #> '{x}', a @> b FROM t");
    read("SELECT 1--2\n");
    read("SELECT 1+/*x*/2");
    read("SELECT arr[1:2] FROM t");
    read("SELECT a OPERATOR(pg_catalog.+) b FROM t");
}

#[test]
fn non_ascii_identifiers() {
    read("SELECT größe FROM maße");
    read(r#"SELECT "naïve" FROM "café""#);
    write("SELECT fünf(1)", unknown("fünf"));
}

// ---- keywords that write -----------------------------------------------

#[test]
fn locking_clauses() {
    write(
        r#"SELECT "users"."id" FROM "users" WHERE "users"."id" = ANY($1) FOR UPDATE"#,
        lock("FOR UPDATE"),
    );
    write(
        "SELECT * FROM t FOR NO KEY UPDATE",
        lock("FOR NO KEY UPDATE"),
    );
    write("SELECT * FROM t FOR SHARE", lock("FOR SHARE"));
    write("SELECT * FROM t FOR KEY SHARE", lock("FOR KEY SHARE"));
    write("SELECT * FROM t FOR UPDATE SKIP LOCKED", lock("FOR UPDATE"));
    write("SELECT * FROM t FOR UPDATE NOWAIT", lock("FOR UPDATE"));
    write("SELECT * FROM t for update of t", lock("FOR UPDATE"));
    write(
        "SELECT * FROM (SELECT * FROM t FOR SHARE) s",
        lock("FOR SHARE"),
    );
    write("SELECT * FROM t FOR /* x */ UPDATE", lock("FOR UPDATE"));
}

#[test]
fn substring_for_is_not_a_locking_clause() {
    read("SELECT substring(x FROM 1 FOR 2) FROM t");
    read("SELECT substring('abc' FOR 2)");
}

#[test]
fn data_modifying_with() {
    write(
        "WITH x AS (INSERT INTO t (a) VALUES (1) RETURNING id) SELECT * FROM x",
        cte("INSERT"),
    );
    write(
        "WITH d AS (DELETE FROM t WHERE a = 1 RETURNING *) SELECT count(*) FROM d",
        cte("DELETE"),
    );
    write(
        "WITH u AS (UPDATE t SET a = 2 RETURNING *) SELECT * FROM u",
        cte("UPDATE"),
    );
    // The main statement of a WITH is a write statement.
    write(
        "WITH s AS (SELECT 1 AS a) INSERT INTO t SELECT a FROM s",
        stmt("INSERT"),
    );
    write("with s as (select 1) delete from t using s", stmt("DELETE"));
    read(
        "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n+1 FROM t WHERE n < 5) SELECT sum(n) FROM t",
    );
}

#[test]
fn keywords_as_names_do_not_write() {
    read("SELECT t.update, t.delete, t.into FROM t");
    read("SELECT 1 AS update");
    read(r#"SELECT "t"."insert" FROM "t""#);
}

#[test]
fn select_into() {
    write("SELECT * INTO new_table FROM t", WriteReason::SelectInto);
    write("select a into temp x from t", WriteReason::SelectInto);
    write(
        "WITH x AS (SELECT 1) SELECT * INTO y FROM x",
        WriteReason::SelectInto,
    );
}

// ---- function calls ----------------------------------------------------

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

// ---- hints ---------------------------------------------------------------

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

// ---- API -----------------------------------------------------------------

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
