//! Statement classification: may a statement run on a hot standby replica?
//!
//! [`Classifier::classify`] reads a PostgreSQL statement as Diesel renders it
//! (or raw SQL from `diesel::sql_query`) and returns [`Classification::Read`]
//! when it can run on a read-only hot standby, or [`Classification::Write`]
//! with the first reason found why it must run on the primary.
//!
//! The classifier never parses SQL fully: it lexes the text (so that the
//! inside of a literal, a comment or a quoted identifier never counts) and
//! looks at the statement's leading keyword, at the keywords that make a
//! query write (`INSERT`/`UPDATE`/`DELETE`/`MERGE` in `WITH`, `FOR UPDATE`
//! and the other locking clauses, `SELECT ... INTO`) and at every function
//! call. When in doubt it answers [`Classification::Write`].
//!
//! What it knows of PostgreSQL (which built-in functions may run on a
//! replica, which must run on the primary, the SQL keywords) is data: text
//! files in `src/classify/data/`, turned into sorted tables by the build
//! script. `data.rs` says how to refresh them for a newer PostgreSQL.

mod data;
mod lexer;
mod operation;
mod scan;
mod session;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::fmt;

use lexer::{Kind, Token};
pub(crate) use operation::operation_name;
pub(crate) use session::SessionEffects;

/// Where a statement may run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Classification {
    /// The statement only reads: it may run on a hot standby replica.
    Read,
    /// The statement must run on the primary, for the given reason.
    Write(WriteReason),
}

impl Classification {
    /// Whether the statement may run on a replica.
    #[must_use]
    pub fn is_read(&self) -> bool {
        matches!(self, Classification::Read)
    }
}

/// Why a statement must run on the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteReason {
    /// The statement is not a query: its leading keyword, uppercased
    /// (`INSERT`, `CREATE`, `SET`, ...), or `EXPLAIN ANALYZE`, which runs the
    /// statement it explains.
    Statement(Box<str>),
    /// A locking clause: `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE` or
    /// `FOR KEY SHARE`.
    LockingClause(&'static str),
    /// `INSERT`, `UPDATE`, `DELETE` or `MERGE` inside a query (a
    /// data-modifying `WITH`).
    DataModifyingCte(&'static str),
    /// `SELECT ... INTO`, which creates a table.
    SelectInto,
    /// A call to a function that must run on the primary: a built-in such as
    /// `nextval` or `pg_advisory_lock`, or one registered with
    /// [`Classifier::primary_functions`].
    PrimaryFunction(Box<str>),
    /// A call to a function the classifier does not know to be read-only.
    /// Register read-only functions with [`Classifier::replica_safe_functions`]
    /// or add a `/* routing:replica */` comment to the statement.
    UnknownFunction(Box<str>),
    /// A `/* routing:primary */` comment.
    Hint,
    /// Empty input, or text that cannot be a statement (including an
    /// unterminated literal, quoted identifier or comment).
    Unrecognized,
}

impl fmt::Display for WriteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteReason::Statement(k) => write!(f, "write statement {k}"),
            WriteReason::LockingClause(c) => write!(f, "locking clause {c}"),
            WriteReason::DataModifyingCte(k) => write!(f, "data-modifying {k} in WITH"),
            WriteReason::SelectInto => f.write_str("SELECT INTO"),
            WriteReason::PrimaryFunction(n) => write!(f, "function {n} must run on the primary"),
            WriteReason::UnknownFunction(n) => write!(f, "unknown function {n}"),
            WriteReason::Hint => f.write_str("routing:primary hint"),
            WriteReason::Unrecognized => f.write_str("unrecognized statement"),
        }
    }
}

/// Decides whether statements may run on a read-only hot standby replica.
///
/// A classifier holds per-pool rules: the application's own functions that
/// are known to be read-only, and those that must run on the primary.
///
/// Rules, in order:
///
/// * Several statements separated by `;` are each classified; any write
///   makes the whole text a write.
/// * `SELECT`, `WITH`, `VALUES`, `TABLE`, `SHOW` and `EXPLAIN` (without
///   `ANALYZE`, so nothing is executed) are reads; every other statement is a
///   write ([`WriteReason::Statement`]). Leading `(` are skipped.
/// * Inside a query, `INSERT`/`UPDATE`/`DELETE`/`MERGE`, a locking clause
///   (`FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE`) and
///   `INTO` make it a write.
/// * Every function call is checked: functions registered with
///   [`primary_functions`](Self::primary_functions) and built-ins such as
///   `nextval`, `setval`, `set_config` or the advisory-lock functions make the
///   statement a write; functions registered with
///   [`replica_safe_functions`](Self::replica_safe_functions) and the
///   immutable or stable built-ins of `pg_catalog` are fine; any other
///   function makes the statement a write ([`WriteReason::UnknownFunction`]).
/// * A comment `/* routing:primary */` (or `-- routing:primary`) anywhere
///   makes the text a write. A comment `/* routing:replica */` anywhere turns
///   an unknown function or an unknown leading keyword into a read, but never
///   any other write.
///
/// The reason reported is the first write found in text order (after
/// dropping unknown functions and keywords when a `routing:replica` comment
/// is present).
///
/// ```
/// use routing_core::{Classification, Classifier, WriteReason};
///
/// let classifier = Classifier::new()
///     .replica_safe_functions(["app.search_posts"])
///     .primary_functions(["touch_session"]);
///
/// assert!(classifier.classify(r#"SELECT "users"."id" FROM "users" WHERE "users"."id" = $1"#).is_read());
/// assert!(classifier.classify("SELECT * FROM app.search_posts($1)").is_read());
/// assert_eq!(
///     classifier.classify("SELECT touch_session($1)"),
///     Classification::Write(WriteReason::PrimaryFunction("touch_session".into())),
/// );
/// assert_eq!(
///     classifier.classify("SELECT 1 FOR UPDATE"),
///     Classification::Write(WriteReason::LockingClause("FOR UPDATE")),
/// );
/// ```
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    replica_safe: FnList,
    primary: FnList,
}

impl Classifier {
    /// A classifier that knows only PostgreSQL's built-in functions.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds functions of the application that are read-only, so that calls to
    /// them can run on a replica.
    ///
    /// Names are matched case-insensitively. A bare name (`my_fn`) matches a
    /// call with or without a schema; a schema-qualified name (`app.my_fn`)
    /// matches calls qualified with that schema and unqualified calls. An
    /// argument list (`my_fn(int)`) and double quotes around each part are
    /// ignored. Built-in functions that must run on the primary (such as
    /// `nextval`) and [`primary_functions`](Self::primary_functions) still
    /// win.
    #[must_use]
    pub fn replica_safe_functions<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.replica_safe.extend(names);
        self
    }

    /// Adds functions of the application that must run on the primary
    /// (because they write, for example). These win over everything else.
    ///
    /// Names are matched as for
    /// [`replica_safe_functions`](Self::replica_safe_functions).
    #[must_use]
    pub fn primary_functions<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.primary.extend(names);
        self
    }

    /// Classifies `sql`: one statement, or several separated by `;`.
    ///
    /// This does not allocate unless the result is a write that names a
    /// statement keyword or a function.
    #[must_use]
    pub fn classify(&self, sql: &str) -> Classification {
        scan::classify(self, sql)
    }
}

/// A list of user function names, lowercase, sorted by name then schema.
#[derive(Clone, Debug, Default)]
struct FnList(Vec<FnName>);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FnName {
    name: Box<str>,
    schema: Option<Box<str>>,
}

impl FnName {
    fn parse(spec: &str) -> Option<FnName> {
        let spec = spec.split('(').next().unwrap_or_default();
        let part = |s: &str| {
            let s = s.trim();
            let s = s
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(s);
            s.to_ascii_lowercase().into_boxed_str()
        };
        let (schema, name) = match spec.rsplit_once('.') {
            Some((schema, name)) => (Some(part(schema)).filter(|s| !s.is_empty()), part(name)),
            None => (None, part(spec)),
        };
        (!name.is_empty()).then_some(FnName { name, schema })
    }
}

impl FnList {
    fn extend<I, S>(&mut self, names: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.0
            .extend(names.into_iter().filter_map(|n| FnName::parse(&n.into())));
        self.0.sort();
        self.0.dedup();
    }

    fn matches(&self, call: &FnCall<'_>) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let start = self
            .0
            .partition_point(|e| e.name.bytes().cmp(call.name.folded()) == Ordering::Less);
        self.0[start..]
            .iter()
            .take_while(|e| e.name.bytes().eq(call.name.folded()))
            .any(|e| match (&e.schema, &call.schema) {
                (Some(s), Some(cs)) => s.bytes().eq(cs.folded()),
                _ => true,
            })
    }
}

/// An identifier as written: unquoted (compared lowercased, as PostgreSQL
/// folds it) or quoted (compared exactly, with `""` read as `"`).
#[derive(Clone, Copy, Debug)]
struct Name<'a> {
    text: &'a str,
    quoted: bool,
}

impl<'a> Name<'a> {
    fn of(t: Token<'a>) -> Self {
        Name {
            text: t.text,
            quoted: t.kind == Kind::Quoted,
        }
    }

    /// The identifier's bytes as PostgreSQL sees them.
    fn bytes(self) -> NameBytes<'a> {
        NameBytes {
            rest: self.text.as_bytes(),
            quoted: self.quoted,
            fold: false,
        }
    }

    /// The identifier's bytes, lowercased even when quoted.
    fn folded(self) -> NameBytes<'a> {
        NameBytes {
            fold: true,
            ..self.bytes()
        }
    }

    fn is(self, s: &str) -> bool {
        self.bytes().eq(s.bytes())
    }

    /// Whether the identifier, as PostgreSQL sees it, starts with `prefix`.
    #[inline]
    fn starts_with(self, prefix: &str) -> bool {
        let mut bytes = self.bytes();
        prefix.bytes().all(|c| bytes.next() == Some(c))
    }

    fn push_to(self, out: &mut String) {
        if self.quoted {
            out.push_str(&self.text.replace("\"\"", "\""));
        } else {
            out.push_str(&self.text.to_ascii_lowercase());
        }
    }
}

#[derive(Clone, Debug)]
struct NameBytes<'a> {
    rest: &'a [u8],
    quoted: bool,
    fold: bool,
}

impl Iterator for NameBytes<'_> {
    type Item = u8;

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let (&c, rest) = self.rest.split_first()?;
        self.rest = rest;
        if self.quoted {
            if c == b'"' {
                // `""` inside a quoted identifier stands for one `"`.
                self.rest = self.rest.get(1..).unwrap_or_default();
            }
            Some(if self.fold { c.to_ascii_lowercase() } else { c })
        } else {
            Some(c.to_ascii_lowercase())
        }
    }
}

/// Looks a name up in a sorted list of lowercase words.
fn in_sorted(list: &[&str], name: Name<'_>) -> bool {
    list.binary_search_by(|probe| probe.bytes().cmp(name.bytes()))
        .is_ok()
}

/// Whether the unquoted word `w` is in a sorted list of lowercase keywords.
fn is_in_keywords(list: &[&str], w: &str) -> bool {
    w.len() <= 32
        && in_sorted(
            list,
            Name {
                text: w,
                quoted: false,
            },
        )
}

/// A function call: its name and, when qualified, its schema.
#[derive(Clone, Copy, Debug)]
struct FnCall<'a> {
    schema: Option<Name<'a>>,
    name: Name<'a>,
}

impl FnCall<'_> {
    fn display(&self) -> Box<str> {
        let mut s = String::with_capacity(
            self.name.text.len() + self.schema.map_or(0, |s| s.text.len() + 1),
        );
        if let Some(schema) = self.schema {
            schema.push_to(&mut s);
            s.push('.');
        }
        self.name.push_to(&mut s);
        s.into_boxed_str()
    }

    /// Whether the built-in lists apply: no schema, or a built-in schema.
    fn builtin_schema(&self) -> bool {
        self.schema
            .is_none_or(|s| s.is("pg_catalog") || s.is("information_schema"))
    }
}
