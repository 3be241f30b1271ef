//! Finding the passwords in a connection string, as tokio-postgres reads it.
//!
//! tokio-postgres accepts two forms. A URL (`postgres://` or `postgresql://`): the user info runs
//! to the first `@` anywhere in the text, the password after its first `:` (percent-decoded),
//! and a query parameter is a password when its percent-decoded key is `password`. A key-value
//! string: keys run to whitespace or `=`, values are single-quoted or run to whitespace, and a
//! backslash escapes the next character in both. Every span either reading could take for the
//! password is reported, so that more is hidden, never less; a text with any other
//! `scheme://` is read as a URL too.

use std::borrow::Cow;

/// Byte ranges of every password in `text`, on character boundaries, sorted and disjoint.
pub(super) fn password_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = match url_rest(text) {
        Some(rest_start) => url_password_spans(text, rest_start),
        None => key_value_password_spans(text),
    };
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Where the text after `scheme://` starts, for any scheme.
fn url_rest(text: &str) -> Option<usize> {
    let end = text.find("://")?;
    let scheme = &text[..end];
    (!scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
    .then_some(end + 3)
}

fn url_password_spans(text: &str, start: usize) -> Vec<(usize, usize)> {
    let rest = &text[start..];
    let mut spans = Vec::new();
    // tokio-postgres: the user info is everything before the first '@'.
    let first_at = rest.find('@');
    if let Some(at) = first_at {
        if let Some(colon) = rest[..at].find(':') {
            spans.push((start + colon + 1, start + at));
        }
    }
    // The usual reading: the user info ends at the last '@' before the path or the query, which
    // differs when the password holds an '@'.
    let authority_end = rest
        .find(['/', '?'])
        .filter(|&end| first_at.is_none_or(|at| end > at))
        .unwrap_or(rest.len());
    if let Some(at) = rest[..authority_end].rfind('@') {
        if let Some(colon) = rest[..at].find(':') {
            spans.push((start + colon + 1, start + at));
        }
    }
    // Query parameters whose decoded key is `password`, wherever a '?' starts them: after the
    // user info as tokio-postgres reads it, and anywhere else a reader might.
    let mut search = 0;
    while let Some(question) = rest[search..].find('?') {
        let params = search + question + 1;
        for (key, value) in params_of(rest, params) {
            if decoded(&rest[key.0..key.1]) == "password" {
                spans.push((start + value.0, start + value.1));
            }
        }
        search = params;
    }
    spans
}

/// The `(key, value)` byte ranges of the `&`-separated `key=value` pairs from `from` to the end.
fn params_of(text: &str, from: usize) -> Vec<((usize, usize), (usize, usize))> {
    let mut pairs = Vec::new();
    let mut pos = from;
    while pos < text.len() {
        let end = text[pos..].find('&').map_or(text.len(), |i| pos + i);
        if let Some(eq) = text[pos..end].find('=') {
            pairs.push(((pos, pos + eq), (pos + eq + 1, end)));
        }
        pos = end + 1;
    }
    pairs
}

fn decoded(text: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy()
}

/// Password values in a key-value connection string, read as tokio-postgres's parser reads
/// them: `password=x`, `password = 'x y'`, with backslash escapes.
fn key_value_password_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut chars = text.char_indices().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut chars);
        let Some(&(key_start, _)) = chars.peek() else {
            break;
        };
        while chars
            .next_if(|(_, c)| !c.is_whitespace() && *c != '=')
            .is_some()
        {}
        let key_end = chars.peek().map_or(text.len(), |&(i, _)| i);
        let key = &text[key_start..key_end];
        skip_ws(&mut chars);
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            // Not a parameter: tokio-postgres rejects the text; hide nothing more than needed,
            // but keep reading.
            chars.next();
            continue;
        }
        skip_ws(&mut chars);
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let value_start = chars.peek().map_or(text.len(), |&(i, _)| i);
        let mut value_end = text.len();
        while let Some(&(i, c)) = chars.peek() {
            if (quoted && c == '\'') || (!quoted && c.is_whitespace()) {
                value_end = i;
                break;
            }
            chars.next();
            if c == '\\' {
                chars.next();
            }
        }
        if quoted {
            chars.next_if(|(_, c)| *c == '\'');
        }
        if key == "password" {
            spans.push((value_start, value_end.max(value_start)));
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    fn redacted(text: &str) -> String {
        crate::url::RedactedUrl::new(text).as_str().to_owned()
    }

    #[test]
    fn passwords_in_every_form_tokio_postgres_reads() {
        let cases = [
            ("postgres://app:s3cret@db/app", "postgres://app:***@db/app"),
            ("postgres://app:pa?ss@db/app", "postgres://app:***@db/app"),
            ("postgres://app:p@ss@db/app", "postgres://app:***@db/app"),
            ("postgres://app:a/b@db/app", "postgres://app:***@db/app"),
            (
                "postgres://db/app?user=u&pass%77ord=hunter2&sslmode=disable",
                "postgres://db/app?user=u&pass%77ord=***&sslmode=disable",
            ),
            (
                "postgresql://db/app?password=hunter2&password=again",
                "postgresql://db/app?password=***&password=***",
            ),
            (
                "host=h password=hunter2 dbname=d",
                "host=h password=*** dbname=d",
            ),
            (
                "host=h password = 'two words' dbname=d",
                "host=h password = '***' dbname=d",
            ),
            (
                "host=h password='it\\'s' dbname=d",
                "host=h password='***' dbname=d",
            ),
            ("host=h\u{a0}password=hunter2", "host=h\u{a0}password=***"),
            ("password=\\é", "password=***"),
            ("password='unterminated", "password='***"),
        ];
        for (text, expected) in cases {
            assert_eq!(redacted(text), expected, "{text}");
        }
    }

    /// A small deterministic generator.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Whatever tokio-postgres parses as the password never survives redaction.
    #[test]
    fn nothing_tokio_postgres_reads_as_a_password_survives() {
        const ALPHABET: &[char] = &[
            'a', 'b', 'Z', '7', '?', '@', ':', '/', '&', '=', '%', '#', ' ', '\'', '\\', '-', 'é',
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut checked = 0;
        for _ in 0..20_000 {
            let len = 6 + (rng.next() % 10) as usize;
            let password: String = (0..len)
                .map(|_| ALPHABET[(rng.next() % ALPHABET.len() as u64) as usize])
                .collect();
            let escaped = password.replace('\\', "\\\\").replace('\'', "\\'");
            let encoded_key = if rng.next() % 2 == 0 {
                "password"
            } else {
                "pass%77ord"
            };
            let forms = [
                format!("postgres://user:{password}@127.0.0.1:5432/db?application_name=x"),
                format!("postgresql://127.0.0.1/db?{encoded_key}={password}&sslmode=disable"),
                format!("host=127.0.0.1 user=u password='{escaped}' dbname=d"),
                format!(
                    "host=127.0.0.1 password={} dbname=d",
                    escaped.replace(' ', "\\ ")
                ),
            ];
            for text in forms {
                let Ok(config) = text.parse::<tokio_postgres::Config>() else {
                    continue;
                };
                let Some(parsed) = config.get_password() else {
                    continue;
                };
                let parsed = String::from_utf8_lossy(parsed);
                if parsed.chars().count() < 6 {
                    continue;
                }
                let out = redacted(&text);
                assert!(
                    !out.contains(&*parsed),
                    "{text:?} -> {out:?} shows {parsed:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 20_000, "only {checked} passwords checked");
    }
}
