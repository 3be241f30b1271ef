//! Statement kinds, the lexer, and the keywords that make a query write.

use super::*;

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
