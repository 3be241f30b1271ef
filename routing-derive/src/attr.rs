//! The argument grammar shared by `#[read_replica(..)]` (the derive's helper attribute) and
//! `#[use_read_replica(..)]` (the attribute for fn handlers):
//!
//! ```text
//! args    := arg ("," arg)* ","?
//! arg     := "true" | "false"          the policy: may reads go to a replica?
//!          | "max_lag" "=" STRING      the staleness budget, e.g. "500ms", "2s", "1.5m"
//! ```
//!
//! At least one argument; at most one bool (default `true`) and one of each key. Errors are
//! collected, so one attribute with several mistakes reports all of them.

use proc_macro2::{Delimiter, Span, TokenStream, TokenTree};
use quote::ToTokens;
use quote::quote;
use syn::{Attribute, Ident, LitBool, LitStr, MacroDelimiter, Meta};

/// The policy written in an attribute, before defaults are applied.
#[derive(Default)]
pub(crate) struct Policy {
    /// The bare `true` / `false`, with the span the user wrote it at.
    pub(crate) use_read_replica: Option<LitBool>,
    /// `max_lag = ".."`, in nanoseconds. A new key gets a field here and one arm in
    /// `Parser::key`.
    pub(crate) max_lag: Option<u64>,
}

impl Policy {
    /// The value of `const USE_READ_REPLICA`: the bool written, or `true`.
    pub(crate) fn use_read_replica(&self) -> LitBool {
        self.use_read_replica
            .clone()
            .unwrap_or_else(|| LitBool::new(true, Span::call_site()))
    }

    /// The items of the generated `ReadReplicaControl` impl.
    pub(crate) fn items(&self) -> TokenStream {
        let value = self.use_read_replica();
        let max_lag = self.max_lag.map(|nanos| {
            quote! {
                const MAX_LAG: ::core::option::Option<::core::time::Duration> =
                    ::core::option::Option::Some(::core::time::Duration::from_nanos(#nanos));
            }
        });
        quote! {
            const USE_READ_REPLICA: bool = #value;
            #max_lag
        }
    }
}

/// Reads a duration such as `500ms`, `2s`, `1.5m` or `1h` (also `us`), in nanoseconds.
pub(crate) fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let unit: u128 = match unit.trim() {
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(unit)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).ok().filter(|d| *d <= 18)?;
        let fraction: u128 = fraction.parse().ok()?;
        nanos = nanos.checked_add(fraction * unit / 10u128.pow(digits))?;
    }
    u64::try_from(nanos).ok()
}

/// Every error found so far, combined into one `syn::Error` that renders as several
/// `compile_error!`s.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// The errors so far followed by `error`.
    pub(crate) fn and(self, error: syn::Error) -> syn::Error {
        match self.0 {
            Some(mut first) => {
                first.combine(error);
                first
            }
            None => error,
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Parses the arguments of one attribute named `name` into `policy`, collecting errors.
struct Parser<'a> {
    name: &'a str,
    policy: &'a mut Policy,
    errors: &'a mut Errors,
}

impl Parser<'_> {
    /// `tokens` is what is inside the parentheses; it is not empty.
    fn args(&mut self, tokens: TokenStream) {
        let mut arg = Vec::new();
        for token in tokens {
            match token {
                TokenTree::Punct(comma) if comma.as_char() == ',' => {
                    if arg.is_empty() {
                        // `(, true)` or `(true,, false)`.
                        self.errors.push(self.expected_bool(comma));
                    } else {
                        self.arg(std::mem::take(&mut arg));
                    }
                }
                token => arg.push(token),
            }
        }
        // A trailing comma leaves `arg` empty, which is fine.
        if !arg.is_empty() {
            self.arg(arg);
        }
    }

    /// One comma-separated argument, not empty.
    fn arg(&mut self, arg: Vec<TokenTree>) {
        match arg.as_slice() {
            [TokenTree::Ident(value)] if value == "true" || value == "false" => {
                self.bool(LitBool::new(value == "true", value.span()));
            }
            // What a `macro_rules!` passes for `$value:literal` or `$value:expr`.
            [TokenTree::Group(group)] if group.delimiter() == Delimiter::None => {
                let inner: Vec<TokenTree> = group.stream().into_iter().collect();
                if inner.is_empty() {
                    self.errors.push(self.expected_bool(group));
                } else {
                    self.arg(inner);
                }
            }
            [TokenTree::Ident(key), TokenTree::Punct(eq), value @ ..]
                if eq.as_char() == '=' && eq.spacing() == proc_macro2::Spacing::Alone =>
            {
                let value = value.iter().cloned().collect();
                self.key(key, value);
            }
            _ => {
                let arg: TokenStream = arg.into_iter().collect();
                self.errors.push(self.expected_bool(arg));
            }
        }
    }

    fn bool(&mut self, value: LitBool) {
        if self.policy.use_read_replica.is_some() {
            self.errors.push(syn::Error::new_spanned(
                value,
                format!(
                    "duplicate value in #[{}(..)]; expected a single `true` or `false`",
                    self.name
                ),
            ));
        } else {
            self.policy.use_read_replica = Some(value);
        }
    }

    /// `key = value`. Adding a key is one arm here (plus its field in `Policy`).
    fn key(&mut self, key: &Ident, value: TokenStream) {
        match key.to_string().as_str() {
            "max_lag" => self.max_lag(key, value),
            _ => {
                self.errors.push(syn::Error::new_spanned(
                    key,
                    format!(
                        "unknown key `{key}` in #[{}(..)]; expected `true`, `false` or `max_lag = \"..\"`",
                        self.name
                    ),
                ));
            }
        }
    }

    /// `max_lag = "2s"`.
    fn max_lag(&mut self, key: &Ident, value: TokenStream) {
        let literal = match syn::parse2::<LitStr>(value.clone()) {
            Ok(literal) => literal,
            Err(_) => {
                let tokens = if value.is_empty() {
                    key.to_token_stream()
                } else {
                    value
                };
                self.errors.push(syn::Error::new_spanned(
                    tokens,
                    format!(
                        "expected a duration string in #[{}(max_lag = \"..\")], like \"500ms\" or \"2s\"",
                        self.name
                    ),
                ));
                return;
            }
        };
        let Some(nanos) = parse_duration(&literal.value()) else {
            self.errors.push(syn::Error::new_spanned(
                &literal,
                format!(
                    "invalid duration {:?}: expected a number and a unit (us, ms, s, m or h), like \"500ms\" or \"2s\"",
                    literal.value()
                ),
            ));
            return;
        };
        if self.policy.max_lag.is_some() {
            self.errors.push(syn::Error::new_spanned(
                key,
                format!("duplicate key `max_lag` in #[{}(..)]", self.name),
            ));
        } else {
            self.policy.max_lag = Some(nanos);
        }
    }

    fn expected_bool(&self, tokens: impl ToTokens) -> syn::Error {
        syn::Error::new_spanned(
            tokens,
            format!("expected `true` or `false` in #[{}(..)]", self.name),
        )
    }
}

/// The error for an attribute without arguments: `#[name]`, `#[name()]`, `#[name = ..]`.
pub(crate) fn empty(name: &str, tokens: impl ToTokens) -> syn::Error {
    syn::Error::new_spanned(tokens, empty_message(name))
}

fn empty_message(name: &str) -> String {
    format!("expected `#[{name}(true)]` or `#[{name}(false)]`")
}

/// Parses the arguments of an attribute macro (`tokens` is what is inside the parentheses),
/// reporting an empty list at `span` (the attribute: `Span::call_site()`).
pub(crate) fn parse_args(
    name: &str,
    tokens: TokenStream,
    span: Span,
    policy: &mut Policy,
    errors: &mut Errors,
) {
    if tokens.is_empty() {
        errors.push(syn::Error::new(span, empty_message(name)));
        return;
    }
    Parser {
        name,
        policy,
        errors,
    }
    .args(tokens);
}

/// Parses one `#[name(..)]` attribute into `policy`, collecting errors.
pub(crate) fn parse_attribute(
    name: &str,
    attr: &Attribute,
    policy: &mut Policy,
    errors: &mut Errors,
) {
    match &attr.meta {
        Meta::List(list)
            if matches!(list.delimiter, MacroDelimiter::Paren(_)) && !list.tokens.is_empty() =>
        {
            Parser {
                name,
                policy,
                errors,
            }
            .args(list.tokens.clone());
        }
        _ => errors.push(empty(name, attr)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: TokenStream) -> Result<Option<bool>, Vec<String>> {
        let mut policy = Policy::default();
        let mut errors = Errors::default();
        parse_args(
            "read_replica",
            tokens,
            Span::call_site(),
            &mut policy,
            &mut errors,
        );
        match errors.finish() {
            Ok(()) => Ok(policy.use_read_replica.map(|value| value.value)),
            Err(error) => Err(error.into_iter().map(|e| e.to_string()).collect()),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Some(2_000_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("1.5m"), Some(90_000_000_000));
        assert_eq!(parse_duration(" 250 us "), Some(250_000));
        assert_eq!(parse_duration(".5s"), Some(500_000_000));
        assert_eq!(parse_duration("1h"), Some(3_600_000_000_000));
        for bad in [
            "",
            "2",
            "s",
            "2 seconds",
            "1.2.3s",
            "-1s",
            ".s",
            "99999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn bools() {
        assert_eq!(parse(quote!(true)), Ok(Some(true)));
        assert_eq!(parse(quote!(false)), Ok(Some(false)));
        assert_eq!(parse(quote!(false,)), Ok(Some(false)));
    }

    #[test]
    fn none_delimited_group() {
        let group = proc_macro2::Group::new(Delimiter::None, quote!(false));
        assert_eq!(parse(quote!(#group)), Ok(Some(false)));
    }

    #[test]
    fn empty() {
        assert_eq!(
            parse(quote!()),
            Err(vec![
                "expected `#[read_replica(true)]` or `#[read_replica(false)]`".to_owned()
            ])
        );
    }

    #[test]
    fn not_bools() {
        let expected = || {
            Err(vec![
                "expected `true` or `false` in #[read_replica(..)]".into(),
            ])
        };
        assert_eq!(parse(quote!("no")), expected());
        assert_eq!(parse(quote!(0)), expected());
        assert_eq!(parse(quote!(yes)), expected());
        assert_eq!(parse(quote!(r#true)), expected());
        assert_eq!(parse(quote!(!true)), expected());
        assert_eq!(parse(quote!(foo == true)), expected());
        assert_eq!(parse(quote!(,)), expected());
    }

    #[test]
    fn unknown_key() {
        assert_eq!(
            parse(quote!(foo = true)),
            Err(vec![
                "unknown key `foo` in #[read_replica(..)]; expected `true`, `false` or `max_lag = \"..\"`".into()
            ])
        );
    }

    #[test]
    fn every_error_is_reported() {
        assert_eq!(
            parse(quote!(true, false, "no", foo = 1, true)),
            Err(vec![
                "duplicate value in #[read_replica(..)]; expected a single `true` or `false`"
                    .into(),
                "expected `true` or `false` in #[read_replica(..)]".into(),
                "unknown key `foo` in #[read_replica(..)]; expected `true`, `false` or `max_lag = \"..\"`".into(),
                "duplicate value in #[read_replica(..)]; expected a single `true` or `false`"
                    .into(),
            ])
        );
    }
}
