//! Exit code 3: a target that is a configured read replica is refused before connecting, a
//! standby once connected; nothing changes on any server.

mod support;

use routing_fixtures::MIGRATION_DIR;
use support::{
    TestDb, applied_versions, assert_code, assert_never_connected, cli, cluster, silent_listener,
    table_exists,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_replica_from_database_read_replica_url_without_connecting() {
    let cluster = cluster().await;
    let replicas = cluster.replica_urls().join(",");
    let port = cluster.replica_port(1);
    let env = [
        ("ENABLE_READ_REPLICA", "1"),
        ("DATABASE_READ_REPLICA_URL", replicas.as_str()),
    ];
    let targets = [
        cluster.replica_url(1),
        format!("host=127.0.0.1 port={port} dbname=postgres user=postgres"),
        format!("postgresql://postgres:hunter2@localhost:{port}/postgres?sslmode=disable"),
    ];
    for target in &targets {
        for command in ["run", "revert", "redo", "list"] {
            let run = cli(
                &[
                    command,
                    "--database-url",
                    target,
                    "--migration-dir",
                    MIGRATION_DIR,
                ],
                &env,
            );
            assert_code(&run, 3);
            assert_eq!(run.stdout, "");
            assert!(
                run.stderr.starts_with("error: refusing to migrate ")
                    && run.stderr.contains("read replica 1")
                    && run.stderr.contains("DATABASE_READ_REPLICA_URL"),
                "{run:#?}"
            );
            assert!(!run.stderr.contains("hunter2"), "{run:#?}");
        }
    }
    let run = cli(
        &["run", "--migration-dir", MIGRATION_DIR],
        &[
            ("DATABASE_URL", targets[2].as_str()),
            ("ENABLE_READ_REPLICA", "1"),
            ("DATABASE_READ_REPLICA_URL", replicas.as_str()),
        ],
    );
    assert_code(&run, 3);
    assert!(
        run.stderr.contains("postgresql://postgres:***@localhost"),
        "{run:#?}"
    );

    // A "replica" that would hang any client: the refusal comes before connecting.
    let (listener, port) = silent_listener();
    let replica = format!("postgres://app:sekrit@127.0.0.1:{port}/app");
    let target = format!("postgres://other:sekrit2@localhost:{port}/app");
    let run = cli(
        &[
            "run",
            "--database-url",
            &target,
            "--migration-dir",
            MIGRATION_DIR,
        ],
        &[
            ("ENABLE_READ_REPLICA", "1"),
            ("DATABASE_READ_REPLICA_URL", replica.as_str()),
        ],
    );
    assert_code(&run, 3);
    assert!(!run.stderr.contains("sekrit"), "{run:#?}");
    assert!(
        run.stderr
            .contains(&format!("postgres://other:***@localhost:{port}/app")),
        "{run:#?}"
    );
    assert_never_connected(&listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_replica_from_postgres_read_replica_parts_without_connecting() {
    let cluster = cluster().await;
    let port = cluster.replica_port(0).to_string();
    let parts = |port: &str| {
        vec![
            ("ENABLE_READ_REPLICA", "1".to_owned()),
            ("POSTGRES_READ_REPLICA_HOST", "127.0.0.1".to_owned()),
            ("POSTGRES_READ_REPLICA_PORT", port.to_owned()),
            ("POSTGRES_READ_REPLICA_USER", "postgres".to_owned()),
            ("POSTGRES_READ_REPLICA_PASSWORD", "s3cret-part".to_owned()),
            ("POSTGRES_READ_REPLICA_DB", "postgres".to_owned()),
        ]
    };
    let env = parts(&port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = cli(
        &[
            "run",
            "--database-url",
            &cluster.replica_url(0),
            "--migration-dir",
            MIGRATION_DIR,
        ],
        &env,
    );
    assert_code(&run, 3);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains("read replica 0") && run.stderr.contains("POSTGRES_READ_REPLICA_HOST"),
        "{run:#?}"
    );
    assert!(!run.stderr.contains("s3cret-part"), "{run:#?}");

    let (listener, port) = silent_listener();
    let env = parts(&port.to_string());
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let target = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    env.push(("DATABASE_URL", &target));
    let run = cli(&["list", "--migration-dir", MIGRATION_DIR], &env);
    assert_code(&run, 3);
    assert_never_connected(&listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_standby_when_no_replica_is_configured() {
    let cluster = cluster().await;
    let db = TestDb::create(cluster, "standby").await;
    cluster
        .wait_for_replicas()
        .await
        .expect("replicas catch up");
    let standby = db.url_on(&cluster.replica_url(0));
    let other_replica = cluster.replica_url(1);
    for (command, env) in [
        ("run", vec![("DATABASE_URL", standby.as_str())]),
        ("redo", vec![("DATABASE_URL", standby.as_str())]),
        (
            // Replicas listed but not enabled: only pg_is_in_recovery() can tell.
            "list",
            vec![
                ("DATABASE_URL", standby.as_str()),
                ("ENABLE_READ_REPLICA", "0"),
                ("DATABASE_READ_REPLICA_URL", standby.as_str()),
            ],
        ),
        (
            // Replicas enabled, but not this one.
            "run",
            vec![
                ("DATABASE_URL", standby.as_str()),
                ("ENABLE_READ_REPLICA", "1"),
                ("DATABASE_READ_REPLICA_URL", other_replica.as_str()),
            ],
        ),
    ] {
        let run = cli(&[command, "--migration-dir", MIGRATION_DIR], &env);
        assert_code(&run, 3);
        assert_eq!(run.stdout, "");
        assert!(
            run.stderr.starts_with("error: refusing to migrate ")
                && run.stderr.contains("pg_is_in_recovery() is true")
                && run.stderr.contains("standby"),
            "{run:#?}"
        );
    }
    // Unchanged, on the standby and on the primary it follows.
    cluster
        .wait_for_replicas()
        .await
        .expect("replicas catch up");
    for url in [&standby, &db.url] {
        assert!(!table_exists(url, "products").await, "{url}");
        assert_eq!(applied_versions(url).await, None, "{url}");
    }
    db.drop_now().await;
}
