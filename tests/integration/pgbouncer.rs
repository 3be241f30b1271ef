//! Through PgBouncer: in transaction mode with `transaction_pooler(true)` and in session mode with
//! the default settings, concurrent mixed statements run without an error where the servers say
//! they should; in transaction mode without the switch, the router says to set it.

use std::sync::Arc;

use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::Integer;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use routing_cluster::{LocalCluster, PoolMode};
use routing_core::dsl::{inet_server_port, pg_is_in_recovery};
use routing_core::{Error, RoutedConnection, RoutedPool, RoutedPoolBuilder, with_read_replica};
use routing_fixtures::{OrderStatus, products};
use routing_tests::{ServerId, unique};

use crate::support::{insert_order, insert_product};

/// Concurrent tasks, and the statements each sends.
const TASKS: usize = 8;
const STATEMENTS: usize = 500;

/// A private cluster with a PgBouncer in `mode` in front of each server (bouncer pools of
/// `pool_size` server connections), migrated directly; `None` on external servers.
async fn bounced_cluster(test: &str, mode: PoolMode, pool_size: u32) -> Option<LocalCluster> {
    routing_tests::servers().await.local(test)?;
    let cluster = LocalCluster::builder()
        .pgbouncer(mode)
        .pgbouncer_pool_size(pool_size)
        .start()
        .await
        .expect("start a cluster behind PgBouncer");
    routing_core::Migrator::connect(&cluster.primary_url())
        .await
        .expect("connect the migrator")
        .run_pending(routing_fixtures::MIGRATIONS)
        .await
        .expect("migrate");
    cluster
        .wait_for_replicas()
        .await
        .expect("replicas catch up");
    Some(cluster)
}

/// A pool over the bouncers of `cluster`.
fn through_bouncers(cluster: &LocalCluster) -> RoutedPoolBuilder {
    RoutedPool::builder(cluster.bouncer_primary_url().expect("a bouncer"))
        .replicas(cluster.bouncer_replica_urls())
        .retry_writes_refused_by_replica(false)
}

/// Where a statement ran and which backend ran it, from its own result.
type Ran = (bool, i32, i32);

fn here() -> (
    pg_is_in_recovery,
    inet_server_port,
    diesel::expression::SqlLiteral<Integer>,
) {
    (
        pg_is_in_recovery(),
        inet_server_port(),
        diesel::dsl::sql::<Integer>("pg_backend_pid()"),
    )
}

/// What the workload saw: statements sent, errors, and statements on the wrong server.
#[derive(Debug, Default)]
struct Outcome {
    statements: usize,
    replica_reads: usize,
    errors: Vec<String>,
    misplaced: Vec<String>,
}

impl Outcome {
    fn check(&mut self, what: &str, ran: Ran, on_replica: bool, cluster: &LocalCluster) {
        let (in_recovery, port, _) = ran;
        let port = u16::try_from(port).unwrap_or_default();
        let expected = if on_replica {
            in_recovery && (0..cluster.replica_count()).any(|i| cluster.replica_port(i) == port)
        } else {
            !in_recovery && port == cluster.primary_port()
        };
        if !expected {
            self.misplaced.push(format!("{what} ran on {ran:?}"));
        }
        self.replica_reads += usize::from(on_replica && expected);
    }
}

/// One task's share: until it sent [`STATEMENTS`] statements, a mix of replica reads, writes,
/// reads after writes, read-write transactions and read-only transactions on replicas, each on
/// a connection of its own.
async fn mixed_statements(pool: RoutedPool, cluster: Arc<LocalCluster>, task: usize) -> Outcome {
    let mut outcome = Outcome::default();
    let mut step = 0_i32;
    while outcome.statements < STATEMENTS {
        step += 1;
        let mut conn = pool.get().await.expect("a routed connection");
        let result = one_step(&mut conn, task, step, &cluster, &mut outcome).await;
        if let Err(error) = result {
            outcome
                .errors
                .push(format!("task {task} step {step}: {error}"));
        }
    }
    outcome
}

async fn one_step(
    conn: &mut RoutedConnection,
    task: usize,
    step: i32,
    cluster: &LocalCluster,
    outcome: &mut Outcome,
) -> Result<(), DieselError> {
    let name = format!("bouncer_{task}_{step}");
    match step % 5 {
        0 => {
            let (ran, echoed) = with_read_replica(true, async {
                diesel::select((here(), step.into_sql::<Integer>()))
                    .get_result::<(Ran, i32)>(conn)
                    .await
            })
            .await?;
            assert_eq!(echoed, step, "the bind came back");
            outcome.statements += 1;
            outcome.check("a replica read", ran, true, cluster);
        }
        1 => {
            let (_, ran) = insert_product(conn, &name).await;
            outcome.statements += 1;
            let ran = (ran.in_recovery, ran.port, 0);
            outcome.check("an insert", ran, false, cluster);
        }
        2 => {
            let (id, _) = insert_product(conn, &name).await;
            insert_order(conn, id, OrderStatus::Pending).await;
            let (found, ran) = with_read_replica(true, async {
                products::table
                    .find(id)
                    .select((products::name, here()))
                    .get_result::<(String, Ran)>(conn)
                    .await
            })
            .await?;
            assert_eq!(found, name);
            outcome.statements += 3;
            outcome.check("a read after a write", ran, false, cluster);
        }
        3 => {
            let (first, second) = conn
                .transaction(async |conn| {
                    let (id, _) = insert_product(conn, &name).await;
                    let first = diesel::select(here()).get_result::<Ran>(conn).await?;
                    let (found, second) = products::table
                        .find(id)
                        .select((products::name, here()))
                        .get_result::<(String, Ran)>(conn)
                        .await?;
                    assert_eq!(found, name, "the transaction sees its own row");
                    Ok::<_, DieselError>((first, second))
                })
                .await?;
            outcome.statements += 5;
            outcome.check("a statement of a transaction", first, false, cluster);
            if first.2 != second.2 {
                outcome.misplaced.push(format!(
                    "a transaction ran on two backends: {first:?} and {second:?}"
                ));
            }
        }
        _ => {
            let (first, second) = with_read_replica(true, async {
                conn.build_transaction()
                    .read_only()
                    .run(async |conn| {
                        let first = diesel::select(here()).get_result::<Ran>(conn).await?;
                        let second = diesel::select(here()).get_result::<Ran>(conn).await?;
                        Ok::<_, DieselError>((first, second))
                    })
                    .await
            })
            .await?;
            outcome.statements += 4;
            outcome.check("a read-only transaction", first, true, cluster);
            if first.2 != second.2 {
                outcome.misplaced.push(format!(
                    "a read-only transaction ran on two backends: {first:?} and {second:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Runs [`TASKS`] tasks of mixed statements on `pool` and checks that every statement succeeded
/// where it belonged.
async fn run_workload(pool: RoutedPool, cluster: &Arc<LocalCluster>) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| tokio::spawn(mixed_statements(pool.clone(), Arc::clone(cluster), task)))
        .collect();
    let mut total = Outcome::default();
    for task in tasks {
        let outcome = task.await.expect("a task finished");
        total.statements += outcome.statements;
        total.replica_reads += outcome.replica_reads;
        total.errors.extend(outcome.errors);
        total.misplaced.extend(outcome.misplaced);
    }
    assert!(total.statements >= TASKS * STATEMENTS);
    assert_eq!(total.errors, Vec::<String>::new(), "{}", pool.status());
    assert_eq!(total.misplaced, Vec::<String>::new());
    assert!(total.replica_reads > 0);
    eprintln!(
        "{} statements, {} reads on replicas, no error\n{}",
        total.statements,
        total.replica_reads,
        pool.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transaction_mode_with_transaction_pooler_runs_everything_where_the_servers_say() {
    let test = "transaction_mode_with_transaction_pooler_runs_everything_where_the_servers_say";
    let Some(cluster) = bounced_cluster(test, PoolMode::Transaction, 4).await else {
        return;
    };
    // Sixteen clients per bouncer (the default pool) share its four server connections.
    let pool = through_bouncers(&cluster)
        .transaction_pooler(true)
        .build()
        .unwrap();
    pool.check().await.unwrap();
    // The cluster lives to the end of the test: the checks after the workload use it too.
    let cluster = Arc::new(cluster);
    run_workload(pool.clone(), &cluster).await;

    // Session state outside a transaction is refused; inside one, a transaction-scoped form runs.
    let mut conn = pool.get().await.unwrap();
    let error = conn
        .batch_execute("SET statement_timeout = '1s'")
        .await
        .unwrap_err();
    assert!(
        matches!(
            Error::from_diesel(&error),
            Some(Error::SessionStateWithTransactionPooler)
        ),
        "{error}"
    );
    let error = diesel::sql_query("SELECT pg_advisory_lock(42)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("SET LOCAL"), "{error}");
    let timeout: String = conn
        .transaction(async |conn| {
            conn.batch_execute("SET LOCAL statement_timeout = '1234ms'")
                .await?;
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "current_setting('statement_timeout')",
            ))
            .get_result(conn)
            .await
        })
        .await
        .unwrap();
    assert_eq!(timeout, "1234ms");
    assert!(matches!(
        conn.primary().await,
        Err(Error::NotWithTransactionPooler { .. })
    ));

    // A write whose commit fails after its row came back (a deferred constraint) fails.
    routing_core::RoutedConnection::establish(&cluster.primary_url())
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE bounced_commits (k integer, \
               CONSTRAINT bounced_commits_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED); \
             INSERT INTO bounced_commits VALUES (1)",
        )
        .await
        .unwrap();

    // A raw transaction block runs (the bouncer keeps its server connection for it) and its
    // statements stay in it; left open, it reaches nobody: on a pool of one session, the next
    // write commits and the abandoned one does not.
    let single = through_bouncers(&cluster)
        .transaction_pooler(true)
        .max_size(1)
        .build()
        .unwrap();
    {
        let mut raw = single.get().await.unwrap();
        raw.batch_execute("BEGIN").await.unwrap();
        diesel::sql_query("INSERT INTO bounced_commits VALUES (2)")
            .execute(&mut raw)
            .await
            .unwrap();
        let inside: Vec<Key> = diesel::sql_query("SELECT k FROM bounced_commits WHERE k = 2")
            .load(&mut raw)
            .await
            .unwrap();
        assert_eq!(inside.len(), 1, "the read left the raw transaction");
    }
    diesel::sql_query("INSERT INTO bounced_commits VALUES (3)")
        .execute(&mut single.get().await.unwrap())
        .await
        .unwrap();
    let committed: Vec<Key> =
        diesel::sql_query("SELECT k FROM bounced_commits WHERE k IN (2, 3) ORDER BY k")
            .load(
                &mut routing_core::RoutedConnection::establish(&cluster.primary_url())
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
    assert_eq!(
        committed.iter().map(|key| key.k).collect::<Vec<_>>(),
        [3],
        "the next write must commit, the abandoned one must not"
    );

    let again = diesel::sql_query("INSERT INTO bounced_commits VALUES (1) RETURNING k")
        .get_result::<Key>(&mut conn)
        .await;
    assert!(
        matches!(
            again,
            Err(DieselError::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        ),
        "{again:?}"
    );
}

#[derive(QueryableByName, Debug)]
struct Key {
    #[diesel(sql_type = Integer)]
    k: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_mode_with_default_settings_runs_everything_where_the_servers_say() {
    let test = "session_mode_with_default_settings_runs_everything_where_the_servers_say";
    // Each client keeps its server connection: room for a default pool of 16 and the probe.
    let Some(cluster) = bounced_cluster(test, PoolMode::Session, 20).await else {
        return;
    };
    let pool = through_bouncers(&cluster).build().unwrap();
    pool.check().await.unwrap();
    run_workload(pool, &Arc::new(cluster)).await;
}

/// Runs a cached statement on `first` while `second` holds a transaction: in transaction mode,
/// the bouncer gives `first`'s statement another server connection than the one it was prepared
/// on (the one it used last is `second`'s now).
async fn cached_statement_beside_a_transaction(pool: &RoutedPool) -> Result<ServerId, DieselError> {
    let mut first = pool.get().await.unwrap();
    let ran = routing_tests::where_ran(&mut first).await;
    assert!(!ran.in_recovery);
    let mut second = pool.get().await.unwrap();
    second
        .transaction(async |second| {
            let _ = routing_tests::where_ran(second).await;
            let (in_recovery, port) = diesel::select((pg_is_in_recovery(), inet_server_port()))
                .get_result::<(bool, i32)>(&mut first)
                .await?;
            Ok(ServerId { port, in_recovery })
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_without_the_switch_says_to_set_it() {
    let test = "transaction_mode_without_the_switch_says_to_set_it";
    let Some(cluster) = bounced_cluster(test, PoolMode::Transaction, 4).await else {
        return;
    };
    let name = unique("no_switch");
    let pool = RoutedPool::builder(routing_tests::with_application_name(
        &cluster.bouncer_primary_url().unwrap(),
        &name,
    ))
    .build()
    .unwrap();
    let error = cached_statement_beside_a_transaction(&pool)
        .await
        .expect_err("a named statement through a transaction pooler");
    match Error::from_diesel(&error) {
        Some(Error::NeedsTransactionPooler { .. }) => {}
        other => panic!("expected the hint, got {other:?}: {error}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("set RoutedPoolBuilder::transaction_pooler(true)")
            && message.contains("prepared statement"),
        "{message}"
    );

    // With the switch, the same statements run.
    let pool = through_bouncers(&cluster)
        .transaction_pooler(true)
        .build()
        .unwrap();
    let ran = cached_statement_beside_a_transaction(&pool).await.unwrap();
    assert_eq!(ran.port, i32::from(cluster.primary_port()));
}
