//! The environment variables that configure a pool: `DATABASE_URL`, `ENABLE_READ_REPLICA`,
//! `DATABASE_READ_REPLICA_URL` and `POSTGRES_READ_REPLICA_*`.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::error::BuildError;

/// Characters escaped in the user, password and database parts of a URL built from pieces.
const COMPONENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b':')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'&')
    .add(b'=')
    .add(b'+')
    .add(b'\'');

/// The URLs the environment configures; `Debug` redacts their passwords.
pub(crate) struct Vars {
    pub(crate) primary: String,
    pub(crate) replicas: Vec<String>,
}

impl std::fmt::Debug for Vars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vars")
            .field("primary", &crate::RedactedUrl::new(&self.primary))
            .field(
                "replicas",
                &self
                    .replicas
                    .iter()
                    .map(|url| crate::RedactedUrl::new(url))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Reads the variables through `lookup`; empty values count as unset.
pub(crate) fn read(lookup: impl Fn(&str) -> Option<String>) -> Result<Vars, BuildError> {
    let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
    let primary = get("DATABASE_URL").ok_or(BuildError::MissingVariable {
        name: "DATABASE_URL",
        why: "it names the primary",
    })?;
    let enabled = match get("ENABLE_READ_REPLICA").as_deref().map(str::trim) {
        None | Some("0") => false,
        Some("1") => true,
        Some(other) => {
            return Err(BuildError::InvalidVariable {
                name: "ENABLE_READ_REPLICA",
                value: other.to_owned(),
                expected: "1 (replicas on) or 0 / unset (every query on the primary)",
            });
        }
    };
    if !enabled {
        return Ok(Vars {
            primary,
            replicas: Vec::new(),
        });
    }
    let replicas = match lookup("DATABASE_READ_REPLICA_URL") {
        // Set but naming no URL (only commas or spaces) is a mistake, not "no replica".
        Some(list) if !list.is_empty() => {
            let replicas = split_url_list(&list);
            if replicas.is_empty() {
                return Err(BuildError::InvalidVariable {
                    name: "DATABASE_READ_REPLICA_URL",
                    value: list,
                    expected: "one replica URL or a comma-separated list of them",
                });
            }
            replicas
        }
        _ => vec![replica_url_from_parts(&get)?],
    };
    Ok(Vars { primary, replicas })
}

/// Splits a comma-separated list of URLs. A comma starts a new URL only where a
/// `postgres://` or `postgresql://` follows it, so that a comma inside a password or a
/// multi-host URL stays where it is; a list of key-value strings splits at every comma.
fn split_url_list(list: &str) -> Vec<String> {
    let is_url = |s: &str| {
        let s = s.trim_start();
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    };
    let mut urls: Vec<String> = Vec::new();
    for piece in list.split(',').filter(|piece| !piece.trim().is_empty()) {
        match urls.last_mut() {
            Some(last) if is_url(last) && !is_url(piece) => {
                last.push(',');
                last.push_str(piece);
            }
            _ => urls.push(piece.to_owned()),
        }
    }
    urls.into_iter()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect()
}

/// Builds a URL from `POSTGRES_READ_REPLICA_DB`, `_USER`, `_PASSWORD`, `_HOST`, `_PORT`.
fn replica_url_from_parts(get: &dyn Fn(&str) -> Option<String>) -> Result<String, BuildError> {
    const WHY: &str =
        "ENABLE_READ_REPLICA=1 without DATABASE_READ_REPLICA_URL needs the replica's parts";
    let required =
        |name: &'static str| get(name).ok_or(BuildError::MissingVariable { name, why: WHY });
    let host = required("POSTGRES_READ_REPLICA_HOST")?;
    let user = required("POSTGRES_READ_REPLICA_USER")?;
    let db = required("POSTGRES_READ_REPLICA_DB")?;
    let password = get("POSTGRES_READ_REPLICA_PASSWORD");
    let port = match get("POSTGRES_READ_REPLICA_PORT") {
        None => 5432,
        Some(port) => port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or(BuildError::InvalidVariable {
                name: "POSTGRES_READ_REPLICA_PORT",
                value: port,
                expected: "a TCP port number from 1 to 65535",
            })?,
    };
    let host = host.trim();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let user = utf8_percent_encode(&user, COMPONENT);
    let db = utf8_percent_encode(&db, COMPONENT);
    Ok(match password {
        Some(password) => {
            let password = utf8_percent_encode(&password, COMPONENT);
            format!("postgres://{user}:{password}@{host}:{port}/{db}")
        }
        None => format!("postgres://{user}@{host}:{port}/{db}"),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::RoutedPoolBuilder;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn primary_only_when_replicas_are_not_enabled() {
        for enable in [None, Some("0"), Some("")] {
            let mut pairs = vec![
                ("DATABASE_URL", "postgres://u@primary/db"),
                ("DATABASE_READ_REPLICA_URL", "postgres://u@replica/db"),
            ];
            if let Some(value) = enable {
                pairs.push(("ENABLE_READ_REPLICA", value));
            }
            let read = read(vars(&pairs)).unwrap();
            assert_eq!(read.primary, "postgres://u@primary/db");
            assert!(read.replicas.is_empty(), "{enable:?}");
        }
    }

    #[test]
    fn replica_url_list_is_split_on_commas() {
        let read = read(vars(&[
            ("DATABASE_URL", "postgres://u@primary/db"),
            ("ENABLE_READ_REPLICA", "1"),
            (
                "DATABASE_READ_REPLICA_URL",
                "postgres://u@r1/db, postgres://u@r2/db,",
            ),
        ]))
        .unwrap();
        assert_eq!(read.replicas, ["postgres://u@r1/db", "postgres://u@r2/db"]);
    }

    #[test]
    fn commas_inside_a_url_stay_in_it() {
        let read = read(vars(&[
            ("DATABASE_URL", "postgres://u@primary/db"),
            ("ENABLE_READ_REPLICA", "1"),
            (
                "DATABASE_READ_REPLICA_URL",
                "postgres://app:Sup3r,secret@r1/db,postgresql://u@r2a,r2b/db",
            ),
        ]))
        .unwrap();
        assert_eq!(
            read.replicas,
            [
                "postgres://app:Sup3r,secret@r1/db",
                "postgresql://u@r2a,r2b/db"
            ]
        );
    }

    #[test]
    fn replica_url_from_parts_encodes_and_defaults_the_port() {
        let read = read(vars(&[
            ("DATABASE_URL", "postgres://u@primary/db"),
            ("ENABLE_READ_REPLICA", "1"),
            ("POSTGRES_READ_REPLICA_DB", "plane replica"),
            ("POSTGRES_READ_REPLICA_USER", "plane@corp"),
            ("POSTGRES_READ_REPLICA_PASSWORD", "p:a/s@s"),
            ("POSTGRES_READ_REPLICA_HOST", "replica.example.com"),
        ]))
        .unwrap();
        assert_eq!(
            read.replicas,
            ["postgres://plane%40corp:p%3Aa%2Fs%40s@replica.example.com:5432/plane%20replica"]
        );
        let config: tokio_postgres::Config = read.replicas[0].parse().unwrap();
        assert_eq!(config.get_user(), Some("plane@corp"));
        assert_eq!(config.get_password(), Some(&b"p:a/s@s"[..]));
        assert_eq!(config.get_dbname(), Some("plane replica"));
        assert_eq!(config.get_ports(), [5432]);
    }

    #[test]
    fn replica_url_from_parts_without_password_and_with_port() {
        let read = read(vars(&[
            ("DATABASE_URL", "postgres://u@primary/db"),
            ("ENABLE_READ_REPLICA", "1"),
            ("POSTGRES_READ_REPLICA_DB", "db"),
            ("POSTGRES_READ_REPLICA_USER", "u"),
            ("POSTGRES_READ_REPLICA_HOST", "::1"),
            ("POSTGRES_READ_REPLICA_PORT", "6543"),
        ]))
        .unwrap();
        assert_eq!(read.replicas, ["postgres://u@[::1]:6543/db"]);
    }

    #[test]
    fn missing_and_invalid_variables_are_clear_errors() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "environment variable DATABASE_URL is not set"),
            (
                &[
                    ("DATABASE_URL", "postgres://h/db"),
                    ("ENABLE_READ_REPLICA", "yes"),
                ],
                "environment variable ENABLE_READ_REPLICA has the value \"yes\": expected 1",
            ),
            (
                &[
                    ("DATABASE_URL", "postgres://h/db"),
                    ("ENABLE_READ_REPLICA", "1"),
                ],
                "environment variable POSTGRES_READ_REPLICA_HOST is not set",
            ),
            (
                &[
                    ("DATABASE_URL", "postgres://h/db"),
                    ("ENABLE_READ_REPLICA", "1"),
                    ("DATABASE_READ_REPLICA_URL", " , ,, "),
                ],
                "environment variable DATABASE_READ_REPLICA_URL has the value \" , ,, \": expected one replica URL",
            ),
            (
                &[
                    ("DATABASE_URL", "postgres://h/db"),
                    ("ENABLE_READ_REPLICA", "1"),
                    ("POSTGRES_READ_REPLICA_HOST", "r"),
                    ("POSTGRES_READ_REPLICA_USER", "u"),
                ],
                "environment variable POSTGRES_READ_REPLICA_DB is not set",
            ),
            (
                &[
                    ("DATABASE_URL", "postgres://h/db"),
                    ("ENABLE_READ_REPLICA", "1"),
                    ("POSTGRES_READ_REPLICA_HOST", "r"),
                    ("POSTGRES_READ_REPLICA_USER", "u"),
                    ("POSTGRES_READ_REPLICA_DB", "d"),
                    ("POSTGRES_READ_REPLICA_PORT", "99999"),
                ],
                "environment variable POSTGRES_READ_REPLICA_PORT has the value \"99999\"",
            ),
        ];
        for (pairs, expected) in cases {
            let message = read(vars(pairs)).unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message}");
        }
    }

    #[test]
    fn invalid_urls_from_the_environment_fail_at_build() {
        let err = RoutedPoolBuilder::from_vars(vars(&[
            ("DATABASE_URL", "postgres://u:hunter2@primary/db"),
            ("ENABLE_READ_REPLICA", "1"),
            (
                "DATABASE_READ_REPLICA_URL",
                "postgres://u:hunter2@replica:port/db",
            ),
        ]))
        .unwrap()
        .build()
        .unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("invalid replica 0 URL"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
