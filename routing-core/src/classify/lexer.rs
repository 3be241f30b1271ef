//! A small, allocation-free PostgreSQL lexer for the statement classifier.
//!
//! It follows the token rules of PostgreSQL's `scan.l` closely enough to never
//! mistake the inside of a literal, a comment or a quoted identifier for SQL
//! text: it does not validate anything else. Plain `'..'` strings are read as
//! with `standard_conforming_strings = on` (the default since PostgreSQL 9.1):
//! a backslash escapes nothing in them, only in `E'..'` strings.

/// What a token is.
// A full word, so that copying a token never reads padding next to a
// one-byte store (which defeats store-to-load forwarding and costs ~30% of
// the classification time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Kind {
    /// An unquoted identifier or keyword; `text` is the word as written.
    Ident,
    /// A quoted identifier (`"x"` or `U&"x"`); `text` is what lies between the
    /// quotes, with `""` escapes left in place.
    Quoted,
    /// A string, bit-string or dollar-quoted literal; `text` is the whole
    /// literal, quotes and prefix included.
    Literal,
    /// A numeric literal.
    Number,
    /// A bind parameter such as `$1`.
    Param,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
    /// `;`
    Semi,
    /// `.`
    Dot,
    /// `::`
    Cast,
    /// An operator, `[`, `]`, `:` or any other character.
    Other,
    /// A `/* routing:primary */` (or `-- routing:primary`) comment.
    PrimaryHint,
}

/// One token: its kind and its text (see [`Kind`] for what the text covers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub(crate) kind: Kind,
    pub(crate) text: &'a str,
}

impl Token<'_> {
    /// Whether this is the unquoted keyword `kw` (given in uppercase or lowercase).
    #[inline]
    pub(crate) fn is_kw(&self, kw: &str) -> bool {
        self.kind == Kind::Ident && self.text.eq_ignore_ascii_case(kw)
    }

    /// Whether this token is an identifier, quoted or not.
    #[inline]
    pub(crate) fn is_name(&self) -> bool {
        matches!(self.kind, Kind::Ident | Kind::Quoted)
    }
}

/// An unterminated literal, quoted identifier or comment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unterminated;

/// The lexer: a position in the source text.
#[derive(Clone, Debug)]
pub(crate) struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    /// Set once a `routing:replica` comment has been skipped.
    pub(crate) replica_hint: bool,
}

const PRIMARY_HINT: &str = "routing:primary";
const REPLICA_HINT: &str = "routing:replica";

#[inline]
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

#[inline]
fn is_ident_cont(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[inline]
fn is_space(b: u8) -> bool {
    // space, or \t \n \v \f \r
    b == b' ' || (b'\t'..=b'\r').contains(&b)
}

#[inline]
fn is_op_char(b: u8) -> bool {
    matches!(
        b,
        b'~' | b'!'
            | b'@'
            | b'#'
            | b'^'
            | b'&'
            | b'|'
            | b'`'
            | b'?'
            | b'+'
            | b'-'
            | b'*'
            | b'/'
            | b'%'
            | b'<'
            | b'>'
            | b'='
    )
}

impl<'a> Lexer<'a> {
    /// A lexer at the start of `src`.
    pub(crate) fn new(src: &'a str) -> Self {
        Lexer {
            src,
            pos: 0,
            replica_hint: false,
        }
    }

    /// Looks at a comment's text for a routing hint.
    #[inline]
    fn hint(&mut self, text: &str) -> bool {
        let text = text.trim_ascii();
        if text.len() == PRIMARY_HINT.len() {
            if text.eq_ignore_ascii_case(PRIMARY_HINT) {
                return true;
            }
            if text.eq_ignore_ascii_case(REPLICA_HINT) {
                self.replica_hint = true;
            }
        }
        false
    }

    /// Skips whitespace and comments. Returns `Ok(true)` after a
    /// `routing:primary` comment, so that it can be reported as a token.
    fn skip_trivia(&mut self) -> Result<bool, Unterminated> {
        let b = self.src.as_bytes();
        while let Some(&c) = b.get(self.pos) {
            if is_space(c) {
                self.pos += 1;
            } else if c == b'-' && b.get(self.pos + 1) == Some(&b'-') {
                let start = self.pos + 2;
                let end = b[start..]
                    .iter()
                    .position(|&c| c == b'\n' || c == b'\r')
                    .map_or(b.len(), |i| start + i);
                self.pos = end;
                if self.hint(&self.src[start..end]) {
                    return Ok(true);
                }
            } else if c == b'/' && b.get(self.pos + 1) == Some(&b'*') {
                let start = self.pos + 2;
                let mut i = start;
                let mut depth = 1usize;
                loop {
                    match (b.get(i), b.get(i + 1)) {
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => return Err(Unterminated),
                    }
                }
                self.pos = i;
                if self.hint(&self.src[start..i - 2]) {
                    return Ok(true);
                }
            } else {
                break;
            }
        }
        Ok(false)
    }

    /// Skips a quoted section that starts at `self.pos` with `quote` and ends
    /// at the next `quote` that is not doubled. With `backslash`, a backslash
    /// escapes the next byte (as in `E'..'`).
    fn skip_quoted(&mut self, quote: u8, backslash: bool) -> Result<(), Unterminated> {
        let b = self.src.as_bytes();
        let mut i = self.pos + 1;
        loop {
            let rest = b.get(i..).ok_or(Unterminated)?;
            i += rest
                .iter()
                .position(|&c| c == quote || (backslash && c == b'\\'))
                .ok_or(Unterminated)?;
            if b[i] != quote {
                // A backslash in an `E'..'` string: skip the escaped byte.
                i += 2;
            } else if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                self.pos = i + 1;
                return Ok(());
            }
        }
    }

    /// At a `$` that is not a parameter: a dollar-quoted string, or a lone `$`.
    fn dollar(&mut self) -> Result<Kind, Unterminated> {
        let b = self.src.as_bytes();
        let start = self.pos;
        let mut i = start + 1;
        if b.get(i).is_some_and(|&c| is_ident_start(c)) {
            i += 1;
            while b.get(i).is_some_and(|&c| is_ident_cont(c) && c != b'$') {
                i += 1;
            }
        }
        if b.get(i) != Some(&b'$') {
            // Not an opening delimiter: PostgreSQL reports a lone `$` too.
            self.pos = start + 1;
            return Ok(Kind::Other);
        }
        let tag = &self.src[start..=i];
        let body = i + 1;
        match self.src[body..].find(tag) {
            Some(at) => {
                self.pos = body + at + tag.len();
                Ok(Kind::Literal)
            }
            None => Err(Unterminated),
        }
    }

    /// A numeric literal starting at `self.pos` (a digit, or `.` and a digit).
    fn number(&mut self) {
        let b = self.src.as_bytes();
        let mut i = self.pos;
        let digits = |i: &mut usize| {
            while b.get(*i).is_some_and(|&c| c.is_ascii_digit() || c == b'_') {
                *i += 1;
            }
        };
        if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
            i += 2;
            while b
                .get(i)
                .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
            {
                i += 1;
            }
            self.pos = i;
            return;
        }
        digits(&mut i);
        if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            let mut j = i + 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                i = j;
                digits(&mut i);
            }
        }
        self.pos = i;
    }

    /// The next token, `Ok(None)` at the end of the text.
    pub(crate) fn next_token(&mut self) -> Result<Option<Token<'a>>, Unterminated> {
        if self.skip_trivia()? {
            return Ok(Some(Token {
                kind: Kind::PrimaryHint,
                text: PRIMARY_HINT,
            }));
        }
        let b = self.src.as_bytes();
        let start = self.pos;
        let Some(&c) = b.get(start) else {
            return Ok(None);
        };
        let next = b.get(start + 1).copied();
        let kind = match c {
            b'\'' => {
                self.skip_quoted(b'\'', false)?;
                Kind::Literal
            }
            b'"' => {
                self.skip_quoted(b'"', false)?;
                return Ok(Some(Token {
                    kind: Kind::Quoted,
                    text: &self.src[start + 1..self.pos - 1],
                }));
            }
            // E'..', B'..', X'..', N'..'
            b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == Some(b'\'') => {
                self.pos += 1;
                self.skip_quoted(b'\'', matches!(c, b'e' | b'E'))?;
                Kind::Literal
            }
            // U&'..' and U&".."
            b'u' | b'U' if next == Some(b'&') && matches!(b.get(start + 2), Some(b'\'' | b'"')) => {
                self.pos += 2;
                if b[self.pos] == b'"' {
                    self.skip_quoted(b'"', false)?;
                    return Ok(Some(Token {
                        kind: Kind::Quoted,
                        text: &self.src[start + 3..self.pos - 1],
                    }));
                }
                self.skip_quoted(b'\'', false)?;
                Kind::Literal
            }
            c if is_ident_start(c) => {
                let mut i = start + 1;
                while b.get(i).is_some_and(|&c| is_ident_cont(c)) {
                    i += 1;
                }
                self.pos = i;
                Kind::Ident
            }
            b'0'..=b'9' => {
                self.number();
                Kind::Number
            }
            b'.' if next.is_some_and(|c| c.is_ascii_digit()) => {
                self.number();
                Kind::Number
            }
            b'$' if next.is_some_and(|c| c.is_ascii_digit()) => {
                let mut i = start + 1;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                self.pos = i;
                Kind::Param
            }
            b'$' => self.dollar()?,
            b'(' => self.single(Kind::LParen),
            b')' => self.single(Kind::RParen),
            b',' => self.single(Kind::Comma),
            b';' => self.single(Kind::Semi),
            b'.' => self.single(Kind::Dot),
            b':' if next == Some(b':') => {
                self.pos += 2;
                Kind::Cast
            }
            c if is_op_char(c) => {
                // An operator ends where a comment starts.
                let mut i = start + 1;
                while let Some(&c) = b.get(i) {
                    if !is_op_char(c)
                        || (c == b'-' && b.get(i + 1) == Some(&b'-'))
                        || (c == b'/' && b.get(i + 1) == Some(&b'*'))
                    {
                        break;
                    }
                    i += 1;
                }
                self.pos = i;
                Kind::Other
            }
            _ => {
                // Any other ASCII character (`[`, `]`, `:`, `{`, a backslash, ...): every
                // byte >= 0x80 starts an identifier, so this is a whole character.
                self.single(Kind::Other)
            }
        };
        Ok(Some(Token {
            kind,
            text: &self.src[start..self.pos],
        }))
    }

    #[inline]
    fn single(&mut self, kind: Kind) -> Kind {
        self.pos += 1;
        kind
    }

    /// The next token that is not a `routing:primary` hint (for look-ahead
    /// on a copy of the lexer).
    pub(crate) fn next_plain(&mut self) -> Result<Option<Token<'a>>, Unterminated> {
        loop {
            match self.next_token()? {
                Some(t) if t.kind == Kind::PrimaryHint => {}
                t => return Ok(t),
            }
        }
    }
}
