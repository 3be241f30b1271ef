//! The scan of a statement: its leading keyword, the keywords that make a
//! query write, and every function call.

use super::lexer::{Kind, Lexer, Token};
use super::{
    Classification, Classifier, FnCall, Name, WriteReason, data, in_sorted, is_in_keywords,
};

/// Classifies `sql` with the rules of `classifier`.
pub(super) fn classify(classifier: &Classifier, sql: &str) -> Classification {
    let mut scan = Scan {
        classifier,
        lx: Lexer::new(sql),
        soft: None,
    };
    let hard = scan.run().err();
    scan.finish(hard)
}

/// A reason to write, found during the scan, before it is turned into a
/// [`WriteReason`].
#[derive(Clone, Copy, Debug)]
enum Found<'a> {
    /// A leading keyword as written.
    Statement(&'a str),
    ExplainAnalyze,
    Locking(&'static str),
    Modify(&'static str),
    SelectInto,
    Primary(FnCall<'a>),
    Unknown(FnCall<'a>),
    Hint,
    Unrecognized,
}

impl Found<'_> {
    fn into_reason(self) -> WriteReason {
        match self {
            Found::Statement(k) => WriteReason::Statement(k.to_ascii_uppercase().into_boxed_str()),
            Found::ExplainAnalyze => WriteReason::Statement("EXPLAIN ANALYZE".into()),
            Found::Locking(c) => WriteReason::LockingClause(c),
            Found::Modify(k) => WriteReason::DataModifyingCte(k),
            Found::SelectInto => WriteReason::SelectInto,
            Found::Primary(call) => WriteReason::PrimaryFunction(call.display()),
            Found::Unknown(call) => WriteReason::UnknownFunction(call.display()),
            Found::Hint => WriteReason::Hint,
            Found::Unrecognized => WriteReason::Unrecognized,
        }
    }
}

/// Whether `w` is the leading keyword of a statement that is not a query: a
/// write that no hint overrides (an unknown leading keyword is a write that
/// `routing:replica` overrides).
fn is_write_statement(w: &str) -> bool {
    data::WRITE_STATEMENTS
        .binary_search_by(|probe| probe.bytes().cmp(w.bytes().map(|c| c.to_ascii_lowercase())))
        .is_ok()
}

/// Interval field keywords, which take a precision in parentheses
/// (`INTERVAL '1' SECOND(3)`, `interval day to second(3)`).
fn is_interval_field(w: &str) -> bool {
    ["YEAR", "MONTH", "DAY", "HOUR", "MINUTE", "SECOND"]
        .iter()
        .any(|f| w.eq_ignore_ascii_case(f))
}

/// Whether an `EXPLAIN` option value turns the option on (PostgreSQL's
/// `parse_bool`; anything it would reject counts as on).
fn option_on(v: Token<'_>) -> bool {
    let s = match v.kind {
        Kind::Number => return v.text != "0",
        Kind::Ident => v.text,
        Kind::Literal if v.text.len() >= 2 && v.text.starts_with('\'') => {
            &v.text[1..v.text.len() - 1]
        }
        _ => return true,
    };
    let prefix_of = |word: &str| s.len() <= word.len() && word[..s.len()].eq_ignore_ascii_case(s);
    let off = !s.is_empty()
        && (prefix_of("false")
            || prefix_of("no")
            || (s.len() >= 2 && prefix_of("off"))
            || s == "0");
    !off
}

/// The last tokens seen, in a ring buffer (cheaper than shifting).
#[derive(Clone, Copy, Default)]
struct Prev<'a> {
    ring: [Option<Token<'a>>; 4],
    head: usize,
}

impl<'a> Prev<'a> {
    #[inline]
    fn push(&mut self, t: Token<'a>) {
        self.head = (self.head + 1) & 3;
        self.ring[self.head] = Some(t);
    }

    /// The token `i` places back (0 = the previous one, up to 2).
    #[inline]
    fn get(&self, i: usize) -> Option<Token<'a>> {
        self.ring[self.head.wrapping_sub(i) & 3]
    }

    /// Whether the token `i` places back is the keyword `kw`.
    #[inline]
    fn kw(&self, i: usize, kw: &str) -> bool {
        self.get(i).is_some_and(|t| t.is_kw(kw))
    }

    #[inline]
    fn kind(&self, i: usize) -> Option<Kind> {
        self.get(i).map(|t| t.kind)
    }
}

/// The start of the (possibly dotted) name that ends at the previous token.
#[derive(Clone, Copy, Default)]
struct Chain<'a> {
    /// The token before the name.
    before: Option<Token<'a>>,
    /// The token before that.
    before2: Option<Token<'a>>,
    /// `before` is a `)` that closes `DISTINCT ON (...)` or `OPERATOR(...)`,
    /// after which an expression (possibly a call) follows.
    after_expr_paren: bool,
    /// The schema, for `schema.name`.
    schema: Option<Token<'a>>,
}

/// One classification in progress.
struct Scan<'c, 'a> {
    classifier: &'c Classifier,
    lx: Lexer<'a>,
    /// The first write found that a `routing:replica` hint overrides.
    soft: Option<Found<'a>>,
}

type Step<'a, T> = Result<T, Found<'a>>;

impl<'a> Scan<'_, 'a> {
    /// The next token; a `routing:primary` hint or a lexing error stops the
    /// scan.
    #[inline]
    fn tok(&mut self) -> Step<'a, Option<Token<'a>>> {
        match self.lx.next_token() {
            Ok(Some(t)) if t.kind == Kind::PrimaryHint => Err(Found::Hint),
            Ok(t) => Ok(t),
            Err(_) => Err(Found::Unrecognized),
        }
    }

    fn soft(&mut self, found: Found<'a>) {
        if self.soft.is_none() {
            self.soft = Some(found);
        }
    }

    /// The result, from the first hard write (if any) and the first soft one.
    fn finish(mut self, hard: Option<Found<'a>>) -> Classification {
        let found = match (hard, self.soft) {
            (None, None) => return Classification::Read,
            (None, Some(_)) if self.lx.replica_hint => return Classification::Read,
            (None, Some(soft)) => soft,
            (Some(hard), None) => hard,
            (Some(hard), Some(soft)) => {
                // The soft write came first; it is the reason unless a
                // `routing:replica` hint (possibly further on) overrides it.
                while let Ok(Some(_)) = self.lx.next_token() {}
                if self.lx.replica_hint { hard } else { soft }
            }
        };
        Classification::Write(found.into_reason())
    }

    /// Scans every statement. `Err` is the first hard write.
    fn run(&mut self) -> Step<'a, ()> {
        let mut statements = 0usize;
        while let Some(mut t) = self.tok()? {
            if t.kind == Kind::Semi {
                continue;
            }
            statements += 1;
            while t.kind == Kind::LParen {
                t = self.tok()?.ok_or(Found::Unrecognized)?;
            }
            if t.kind != Kind::Ident {
                return Err(Found::Unrecognized);
            }
            let w = t.text;
            let more = if w.eq_ignore_ascii_case("SELECT")
                || w.eq_ignore_ascii_case("VALUES")
                || w.eq_ignore_ascii_case("TABLE")
            {
                self.query(t, false)?
            } else if w.eq_ignore_ascii_case("WITH") {
                self.query(t, true)?
            } else if w.eq_ignore_ascii_case("SHOW") {
                self.skip_statement()?
            } else if w.eq_ignore_ascii_case("EXPLAIN") {
                self.explain()?
            } else if is_write_statement(w) {
                return Err(Found::Statement(w));
            } else {
                self.soft(Found::Statement(w));
                self.skip_statement()?
            };
            if !more {
                break;
            }
        }
        if statements == 0 {
            return Err(Found::Unrecognized);
        }
        Ok(())
    }

    /// Skips to the end of the statement: `true` at a `;`, `false` at the end
    /// of the text.
    fn skip_statement(&mut self) -> Step<'a, bool> {
        loop {
            match self.tok()? {
                None => return Ok(false),
                Some(t) if t.kind == Kind::Semi => return Ok(true),
                Some(_) => {}
            }
        }
    }

    /// After `EXPLAIN`: a write with `ANALYZE` (the statement is executed),
    /// otherwise a read whatever the explained statement is (PostgreSQL only
    /// plans it, which a hot standby allows even for `INSERT`).
    fn explain(&mut self) -> Step<'a, bool> {
        let t = self.tok()?.ok_or(Found::Unrecognized)?;
        if t.is_kw("ANALYZE") || t.is_kw("ANALYSE") {
            return Err(Found::ExplainAnalyze);
        }
        match t.kind {
            Kind::Semi => return Err(Found::Unrecognized),
            Kind::LParen => {
                let mut expect_name = true;
                loop {
                    let t = self.tok()?.ok_or(Found::Unrecognized)?;
                    match t.kind {
                        Kind::RParen => break,
                        Kind::Comma => expect_name = true,
                        Kind::Semi => return Err(Found::Unrecognized),
                        Kind::Ident if expect_name => {
                            expect_name = false;
                            if t.is_kw("ANALYZE") || t.is_kw("ANALYSE") {
                                let on = match self.lx.clone().next_plain() {
                                    Ok(Some(v)) if matches!(v.kind, Kind::Comma | Kind::RParen) => {
                                        true
                                    }
                                    Ok(Some(v)) => option_on(v),
                                    _ => true,
                                };
                                if on {
                                    return Err(Found::ExplainAnalyze);
                                }
                            }
                        }
                        _ => expect_name = false,
                    }
                }
            }
            _ => {}
        }
        self.skip_statement()
    }

    /// Scans a query that starts with `lead` (`SELECT`, `WITH`, `VALUES` or
    /// `TABLE`).
    fn query(&mut self, lead: Token<'a>, is_with: bool) -> Step<'a, bool> {
        let mut prev = Prev::default();
        prev.push(lead);
        let mut depth: i32 = 0;
        let mut with_seen = is_with;
        let mut chain = Chain::default();
        // Bit `d` is set when the parenthesis opened at depth `d` is
        // `DISTINCT ON (` or `OPERATOR(`.
        let mut expr_parens: u64 = 0;
        let mut last_close_expr = false;
        loop {
            let Some(t) = self.tok()? else {
                return Ok(false);
            };
            match t.kind {
                Kind::Semi => return Ok(true),
                Kind::Ident | Kind::Quoted => {
                    let after_dot = prev.kind(0) == Some(Kind::Dot);
                    if t.kind == Kind::Ident && !after_dot && !prev.kw(0, "AS") {
                        write_keyword(t, &prev, depth == 0 && is_with)?;
                        with_seen |= t.is_kw("WITH");
                    }
                    if after_dot && prev.get(1).is_some_and(|p| p.is_name()) {
                        chain.schema = prev.get(1);
                    } else {
                        chain = Chain {
                            before: prev.get(0),
                            before2: prev.get(1),
                            after_expr_paren: prev.kind(0) == Some(Kind::RParen) && last_close_expr,
                            schema: None,
                        };
                    }
                }
                Kind::LParen => {
                    if let Some(name) = prev.get(0).filter(Token::is_name) {
                        self.call(name, &chain, with_seen)?;
                    }
                    let expr =
                        prev.kw(0, "OPERATOR") || (prev.kw(0, "ON") && prev.kw(1, "DISTINCT"));
                    if let Ok(d) = u32::try_from(depth) {
                        if d < 64 {
                            expr_parens = (expr_parens & !(1 << d)) | (u64::from(expr) << d);
                        }
                    }
                    depth += 1;
                }
                Kind::RParen => {
                    depth -= 1;
                    last_close_expr = match u32::try_from(depth) {
                        Ok(d) if d < 64 => expr_parens & (1 << d) != 0,
                        Ok(_) => true,
                        Err(_) => false,
                    };
                }
                _ => {}
            }
            prev.push(t);
        }
    }

    /// A name followed by `(`: decides whether it is a function call and, if
    /// so, judges the function.
    fn call(&mut self, name: Token<'a>, chain: &Chain<'a>, with_seen: bool) -> Step<'a, ()> {
        let bare = chain.schema.is_none();
        if bare && name.kind == Kind::Ident {
            // `EXISTS (`, `IN (`, `OVER (`, `varchar(10)`, ...
            if is_in_keywords(data::NOT_FUNCTIONS, name.text) {
                return Ok(());
            }
            // `INTERVAL '1' SECOND(3)`, `interval day to second(3)`
            if is_interval_field(name.text)
                && chain.before.is_some_and(|b| {
                    b.kind == Kind::Literal || b.is_kw("INTERVAL") || b.is_kw("TO")
                })
            {
                return Ok(());
            }
        }
        if let Some(b) = chain.before {
            match b.kind {
                // `x::numeric(10,2)`
                Kind::Cast => return Ok(()),
                // `FROM unnest(x) t(a)`, but not `DISTINCT ON (a) f(x)`
                Kind::RParen if !chain.after_expr_paren => return Ok(()),
                // `FROM "users" "u"("a")`: a quoted identifier is never a keyword
                Kind::Quoted => return Ok(()),
                Kind::Ident => {
                    // `AS t(a)`, `CAST(x AS numeric(3))`, `TABLESAMPLE system(10)`
                    if b.is_kw("AS") || b.is_kw("TABLESAMPLE") {
                        return Ok(());
                    }
                    // A name, not a keyword, before: an alias or a column
                    // name with its type (`FROM users u(a)`,
                    // `AS t(a timestamptz(3))`).
                    if chain.before2.is_some_and(|p| p.kind == Kind::Dot)
                        || !is_in_keywords(data::KEYWORDS, b.text)
                    {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        // `WITH x(a) AS (`, `, y(b) AS MATERIALIZED (`
        if bare
            && with_seen
            && chain
                .before
                .is_some_and(|b| b.kind == Kind::Comma || b.is_kw("WITH") || b.is_kw("RECURSIVE"))
            && self.is_cte_column_list()
        {
            return Ok(());
        }
        self.judge(FnCall {
            schema: chain.schema.map(Name::of),
            name: Name::of(name),
        })
    }

    /// Just after `name(`: whether the parenthesis is a CTE column list,
    /// that is whether its `)` is followed by `AS (`, `AS MATERIALIZED` or
    /// `AS NOT MATERIALIZED`.
    fn is_cte_column_list(&self) -> bool {
        let mut lx = self.lx.clone();
        let mut depth = 1u32;
        while depth > 0 {
            match lx.next_plain() {
                Ok(Some(t)) => match t.kind {
                    Kind::LParen => depth += 1,
                    Kind::RParen => depth -= 1,
                    Kind::Semi => return false,
                    _ => {}
                },
                _ => return false,
            }
        }
        if !matches!(lx.next_plain(), Ok(Some(t)) if t.is_kw("AS")) {
            return false;
        }
        match lx.next_plain() {
            Ok(Some(t)) if t.kind == Kind::LParen || t.is_kw("MATERIALIZED") => true,
            Ok(Some(t)) if t.is_kw("NOT") => {
                matches!(lx.next_plain(), Ok(Some(t)) if t.is_kw("MATERIALIZED"))
            }
            _ => false,
        }
    }

    /// Judges a function call.
    fn judge(&mut self, call: FnCall<'a>) -> Step<'a, ()> {
        let classifier = self.classifier;
        if classifier.primary.matches(&call) || is_builtin_primary(call.name) {
            return Err(Found::Primary(call));
        }
        if classifier.replica_safe.matches(&call)
            || (call.builtin_schema() && in_sorted(data::REPLICA_SAFE, call.name))
        {
            return Ok(());
        }
        self.soft(Found::Unknown(call));
        Ok(())
    }
}

/// Whether a function name is a built-in that must run on the primary
/// (whatever its schema: extensions such as dblink live in any schema).
fn is_builtin_primary(name: Name<'_>) -> bool {
    in_sorted(data::PRIMARY_ONLY, name)
        || data::PRIMARY_ONLY_PREFIXES
            .iter()
            .any(|p| name.starts_with(p))
}

/// Checks an unquoted word inside a query for the keywords that write.
/// `top_of_with` is set at parenthesis depth 0 of a `WITH` statement,
/// where `INSERT` and the like are the main statement.
#[inline]
fn write_keyword<'a>(t: Token<'a>, prev: &Prev<'a>, top_of_with: bool) -> Step<'a, ()> {
    let w = t.text;
    let modify = |kw: &'static str| {
        if top_of_with {
            Found::Statement(w)
        } else {
            Found::Modify(kw)
        }
    };
    match w.len() {
        4 if w.eq_ignore_ascii_case("INTO") => Err(Found::SelectInto),
        5 if w.eq_ignore_ascii_case("MERGE") => Err(modify("MERGE")),
        5 if w.eq_ignore_ascii_case("SHARE") => {
            if prev.kw(0, "FOR") {
                Err(Found::Locking("FOR SHARE"))
            } else if prev.kw(0, "KEY") && prev.kw(1, "FOR") {
                Err(Found::Locking("FOR KEY SHARE"))
            } else {
                Ok(())
            }
        }
        6 if w.eq_ignore_ascii_case("UPDATE") => {
            if prev.kw(0, "FOR") {
                Err(Found::Locking("FOR UPDATE"))
            } else if prev.kw(0, "KEY") && prev.kw(1, "NO") && prev.kw(2, "FOR") {
                Err(Found::Locking("FOR NO KEY UPDATE"))
            } else {
                Err(modify("UPDATE"))
            }
        }
        6 if w.eq_ignore_ascii_case("INSERT") => Err(modify("INSERT")),
        6 if w.eq_ignore_ascii_case("DELETE") => Err(modify("DELETE")),
        _ => Ok(()),
    }
}
