//! Unit tests of the migrator's configuration: nothing here reaches a server.

use std::collections::HashMap;
use std::net::TcpListener;

use super::*;

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// A port that accepts connections and never answers, and whether anything connected.
fn silent_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    (listener, port)
}

fn assert_never_connected(listener: &TcpListener) {
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something connected: {other:?}"),
    }
}

#[tokio::test]
async fn a_replica_is_refused_before_connecting() {
    let (listener, port) = silent_listener();
    let replica = format!("postgres://app:replica-pw@127.0.0.1:{port}/app");
    let error = Migrator::builder(format!("postgres://app:primary-pw@localhost:{port}/app"))
        .refuse_replicas(["postgres://app@10.0.0.9/app".to_owned(), replica])
        .connect()
        .await
        .unwrap_err();
    let Error::TargetIsReplica {
        url,
        replica_index,
        replica,
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(*replica_index, 1);
    assert_eq!(
        url.as_str(),
        format!("postgres://app:***@localhost:{port}/app")
    );
    assert_eq!(
        replica.as_str(),
        format!("postgres://app:***@127.0.0.1:{port}/app")
    );
    assert!(!format!("{error} {error:?}").contains("-pw"), "{error:?}");
    assert_never_connected(&listener);
}

#[tokio::test]
async fn from_vars_refuses_the_replicas_the_environment_configures() {
    let (listener, port) = silent_listener();
    let target = format!("postgres://u@127.0.0.1:{port}/db");
    let parts = [
        ("DATABASE_URL", target.as_str()),
        ("ENABLE_READ_REPLICA", "1"),
        ("POSTGRES_READ_REPLICA_HOST", "localhost"),
        ("POSTGRES_READ_REPLICA_USER", "u"),
        ("POSTGRES_READ_REPLICA_PASSWORD", "parts-pw"),
        ("POSTGRES_READ_REPLICA_DB", "db"),
    ];
    let port = port.to_string();
    let mut parts = parts.to_vec();
    parts.push(("POSTGRES_READ_REPLICA_PORT", &port));
    let list = format!("postgres://u@10.0.0.9/db,postgres://u:list-pw@localhost:{port}/db");
    let listed = [
        ("DATABASE_URL", target.as_str()),
        ("ENABLE_READ_REPLICA", "1"),
        ("DATABASE_READ_REPLICA_URL", list.as_str()),
    ];
    for (pairs, index) in [(&parts[..], 0), (&listed[..], 1)] {
        let error = MigratorBuilder::from_vars(vars(pairs))
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::TargetIsReplica { replica_index, .. } if replica_index == index),
            "{error:?}"
        );
        assert!(!error.to_string().contains("-pw"), "{error}");
    }
    assert_never_connected(&listener);
}

#[test]
fn from_vars_validates_the_variables_and_every_url() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "environment variable DATABASE_URL is not set"),
        (
            &[("DATABASE_URL", "postgres://u:pw1@h:port/db")],
            "invalid primary URL postgres://u:***@h:port/db",
        ),
        (
            &[
                ("DATABASE_URL", "postgres://h/db"),
                ("ENABLE_READ_REPLICA", "yes"),
            ],
            "environment variable ENABLE_READ_REPLICA has the value \"yes\"",
        ),
        (
            &[
                ("DATABASE_URL", "postgres://h/db"),
                ("ENABLE_READ_REPLICA", "1"),
                ("DATABASE_READ_REPLICA_URL", "postgres://u:pw1@r:port/db"),
            ],
            "invalid replica 0 URL postgres://u:***@r:port/db",
        ),
    ];
    for (pairs, expected) in cases {
        let message = MigratorBuilder::from_vars(vars(pairs))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with(expected), "{message}");
    }
    // Replicas listed but not enabled are not read.
    let builder = MigratorBuilder::from_vars(vars(&[
        ("DATABASE_URL", "postgres://h/db"),
        ("DATABASE_READ_REPLICA_URL", "postgres://h/db"),
    ]))
    .unwrap();
    assert!(builder.replicas.is_empty(), "{builder:?}");
}

#[tokio::test]
async fn connect_validates_every_url_first() {
    let error = Migrator::builder("postgres://u@127.0.0.1:1/db")
        .refuse_replicas(["postgres://u:pw2@r:nope/db"])
        .connect()
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("invalid replica 0 URL"), "{message}");
    assert!(!message.contains("pw2"), "{message}");
}

#[test]
fn debug_redacts_every_password() {
    let builder = Migrator::builder("postgres://u:pw3@h/db")
        .refuse_replicas(vec![String::from("postgres://u:pw4@r/db")]);
    let debug = format!("{builder:?}");
    assert!(!debug.contains("pw3") && !debug.contains("pw4"), "{debug}");
    assert!(debug.contains("postgres://u:***@r/db"), "{debug}");
}
