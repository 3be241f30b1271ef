//! The classifier's tables: built-in functions, SQL keywords and the leading
//! keywords of write statements.
//!
//! # Where the data lives
//!
//! Plain text files in `src/classify/data/`, one entry a line, `#` comments:
//!
//! * `nonvolatile_builtins.txt`: the built-in functions whose every overload
//!   is immutable or stable, generated from the catalog (`pg_proc`).
//! * `keywords.txt`: every SQL keyword with its category (`R`, `C`, `T`, `U`
//!   as `pg_get_keywords().catcode`), generated from the catalog, plus tags
//!   kept by hand: `paren` marks the unreserved keywords that precede a
//!   parenthesis in query syntax (`OVER (`, `FILTER (`), `since=N` the
//!   keywords of releases later than the catalog's.
//! * `replica_safe_volatile.txt`, `primary_only.txt`,
//!   `primary_only_prefixes.txt`, `write_statements.txt`: kept by hand, one
//!   entry a line with the reason for it.
//!
//! Each file's header says what it holds; a generated file's header also holds
//! the query that generates it, on its `#>` lines.
//!
//! # How the tables are generated
//!
//! The build script (`routing-core/build.rs`) reads the files, checks them
//! (lowercase names, no stray whitespace, a reason on every curated line, no
//! function both replica-safe and primary-only, known keyword categories and
//! tags), sorts and deduplicates them, and writes the tables below into
//! `$OUT_DIR/classify_data.rs`, which this module includes:
//!
//! * [`REPLICA_SAFE`]: `nonvolatile_builtins.txt` minus the names of
//!   `primary_only.txt` and those starting with a prefix of
//!   `primary_only_prefixes.txt`, plus `replica_safe_volatile.txt`;
//! * [`PRIMARY_ONLY`], [`PRIMARY_ONLY_PREFIXES`], [`WRITE_STATEMENTS`]: their
//!   files;
//! * [`KEYWORDS`]: every word of `keywords.txt`; [`NOT_FUNCTIONS`]: the
//!   reserved (`R`), column-name (`C`) and type/function-name (`T`) keywords
//!   and the unreserved ones tagged `paren`.
//!
//! The tables cannot drift from the files, and a constant assertion below
//! makes an unsorted table a compile error, since the lookups are binary
//! searches.
//!
//! # Refreshing for a newer PostgreSQL
//!
//! Start a server of the new release and run
//!
//! ```text
//! cargo run -p xtask -- classifier-data --database-url postgres://user@host:port/db
//! ```
//!
//! It runs the query in the header of each generated file and rewrites the
//! file with the rows: a function's new volatility or a new keyword shows up
//! in `git diff`. In `keywords.txt` it keeps the tags of each word, and the
//! words tagged `since=N` with `N` later than the server's release. The files
//! kept by hand are not touched: review them against the new release's
//! functions (the command notes curated names the server does not know), add
//! `paren` to new unreserved keywords that precede a parenthesis in query
//! syntax, then run `cargo test -p routing-core --lib classify`.

include!(concat!(env!("OUT_DIR"), "/classify_data.rs"));

/// Whether every name is lowercase ASCII letters, digits and `_`, and each
/// sorts after the one before it by bytes (so the list is sorted and without
/// duplicates, as a binary search needs).
const fn is_lookup_table(list: &[&str]) -> bool {
    let mut i = 0;
    while i < list.len() {
        if !is_lowercase_name(list[i].as_bytes())
            || (i > 0 && !is_before(list[i - 1].as_bytes(), list[i].as_bytes()))
        {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `name` is not empty and only holds lowercase ASCII letters, digits
/// and `_`.
const fn is_lowercase_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        if !matches!(name[i], b'a'..=b'z' | b'0'..=b'9' | b'_') {
            return false;
        }
        i += 1;
    }
    !name.is_empty()
}

/// Whether `a` sorts strictly before `b` by bytes.
const fn is_before(a: &[u8], b: &[u8]) -> bool {
    let mut i = 0;
    while i < a.len() && i < b.len() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    a.len() < b.len()
}

macro_rules! assert_lookup_tables {
    ($($table:ident),+ $(,)?) => {$(
        const _: () = assert!(
            is_lookup_table($table),
            concat!(
                stringify!($table),
                " must be sorted by bytes, without duplicates, and hold lowercase names"
            ),
        );
    )+};
}

assert_lookup_tables!(
    REPLICA_SAFE,
    PRIMARY_ONLY,
    PRIMARY_ONLY_PREFIXES,
    KEYWORDS,
    NOT_FUNCTIONS,
    WRITE_STATEMENTS,
);
