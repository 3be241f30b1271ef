//! Exit code 2: bad usage or configuration, reported before connecting; `--help` exits 0.

mod support;

use routing_fixtures::MIGRATION_DIR;
use support::{TempDir, assert_code, cli, cli_in, cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_url_exits_2() {
    for (args, env) in [
        (vec!["run"], vec![]),
        (vec!["list"], vec![("DATABASE_URL", "  ")]),
        (vec!["run", "--database-url", ""], vec![]),
    ] {
        let run = cli(&args, &env);
        assert_code(&run, 2);
        assert_eq!(run.stdout, "");
        assert!(
            run.stderr.starts_with("error: no database URL") && run.stderr.contains("DATABASE_URL"),
            "{run:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_url_exits_2_without_printing_the_password() {
    for bad in [
        "postgres://u:topsecret@localhost:notaport/db",
        "mysql://u:topsecret@localhost/db",
        "host=localhost port=99999999 password=topsecret",
        "postgres://u:topsecret@/db",
    ] {
        for run in [
            cli(
                &[
                    "run",
                    "--database-url",
                    bad,
                    "--migration-dir",
                    MIGRATION_DIR,
                ],
                &[],
            ),
            cli(
                &["list", "--migration-dir", MIGRATION_DIR],
                &[("DATABASE_URL", bad)],
            ),
        ] {
            assert_code(&run, 2);
            assert_eq!(run.stdout, "");
            assert!(
                run.stderr
                    .starts_with("error: invalid configuration: invalid primary URL"),
                "{run:#?}"
            );
            assert!(!run.stderr.contains("topsecret"), "{run:#?}");
        }
    }
    // An invalid replica URL is a configuration error too.
    let run = cli(
        &["run", "--migration-dir", MIGRATION_DIR],
        &[
            ("DATABASE_URL", "postgres://u@127.0.0.1:1/db"),
            ("ENABLE_READ_REPLICA", "1"),
            (
                "DATABASE_READ_REPLICA_URL",
                "postgres://u:topsecret@replica:nope/db",
            ),
        ],
    );
    assert_code(&run, 2);
    assert!(run.stderr.contains("invalid replica 0 URL"), "{run:#?}");
    assert!(!run.stderr.contains("topsecret"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_invalid_migration_dir_exits_2() {
    let cluster = cluster().await;
    let primary = cluster.primary_url();
    let env = [("DATABASE_URL", primary.as_str())];
    let empty = TempDir::new("nodir");
    let missing = empty.0.join("no-such-dir");
    let run = cli(
        &["run", "--migration-dir", missing.to_str().expect("UTF-8")],
        &env,
    );
    assert_code(&run, 2);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.starts_with("error: invalid migration directory")
            && run.stderr.contains("no-such-dir: it does not exist"),
        "{run:#?}"
    );

    // The default, `migrations`, in a directory that has none.
    let run = cli_in(Some(&empty.0), &["list"], &env);
    assert_code(&run, 2);
    assert!(
        run.stderr.contains("migrations: it does not exist"),
        "{run:#?}"
    );

    // A subdirectory without up.sql is not a migration: diesel refuses the whole directory.
    let invalid = TempDir::new("invalid");
    invalid.migration("2000-01-01-000001_fine", "SELECT 1;", "SELECT 1;");
    std::fs::create_dir(invalid.0.join("src")).expect("create a stray subdirectory");
    let run = cli(&["run", "--migration-dir", invalid.path()], &env);
    assert_code(&run, 2);
    assert!(
        run.stderr.contains("src is not a migration") && run.stderr.contains("up.sql"),
        "{run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_replica_variables_exit_2() {
    let primary = "postgres://u@127.0.0.1:1/db";
    for (env, expected) in [
        (
            vec![("ENABLE_READ_REPLICA", "yes")],
            "ENABLE_READ_REPLICA has the value \"yes\"",
        ),
        (
            vec![("ENABLE_READ_REPLICA", "1")],
            "POSTGRES_READ_REPLICA_HOST is not set",
        ),
        (
            vec![
                ("ENABLE_READ_REPLICA", "1"),
                ("POSTGRES_READ_REPLICA_HOST", "h"),
                ("POSTGRES_READ_REPLICA_USER", "u"),
                ("POSTGRES_READ_REPLICA_DB", "d"),
                ("POSTGRES_READ_REPLICA_PORT", "nope"),
            ],
            "POSTGRES_READ_REPLICA_PORT has the value \"nope\"",
        ),
    ] {
        let mut env = env;
        env.push(("DATABASE_URL", primary));
        let run = cli(&["run", "--migration-dir", MIGRATION_DIR], &env);
        assert_code(&run, 2);
        assert_eq!(run.stdout, "");
        assert!(
            run.stderr
                .starts_with("error: invalid configuration: environment variable")
                && run.stderr.contains(expected),
            "{run:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_and_help_exits_0() {
    // No command at all: clap prints the help to stderr, as a usage error.
    let bare = cli(&[], &[]);
    assert_code(&bare, 2);
    assert_eq!(bare.stdout, "");
    assert!(bare.stderr.contains("Usage: routing-migrate"), "{bare:#?}");
    for args in [
        vec!["frob"],
        vec!["run", "--bogus"],
        vec!["run", "extra"],
        // clap quotes an unexpected argument: a URL's password is redacted.
        vec!["run", "postgres://u:pw123@localhost/db"],
        vec!["run", "--bogus=postgres://u:pw123@localhost/db"],
    ] {
        let run = cli(&args, &[]);
        assert_code(&run, 2);
        assert_eq!(run.stdout, "");
        assert!(run.stderr.starts_with("error: "), "{run:#?}");
        assert!(!run.stderr.contains("pw123"), "{run:#?}");
    }
    let help = cli(&["--help"], &[]);
    assert_code(&help, 0);
    for needle in [
        "Usage: routing-migrate [OPTIONS] <COMMAND>",
        "--database-url <URL>",
        "--migration-dir <DIR>",
        "DATABASE_READ_REPLICA_URL",
        "Exit codes:",
        "3  refused",
    ] {
        assert!(help.stdout.contains(needle), "{needle}: {help:#?}");
    }
    assert_eq!(help.stderr, "");
}
