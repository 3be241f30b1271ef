//! What runs when the pool opens a server connection: the `on_connect` hook, once per new
//! pooled connection, told its role; and the credentials provider, asked for the password of
//! every new connection (pools, probe, check, migrations), so that a rotated password is picked
//! up by the next connection opened.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use routing_cluster::LocalCluster;
use routing_core::{
    CheckoutError, ConnectError, Error, Login, Role, RoutedPool, with_read_replica,
};
use routing_tests::{servers, unique, where_ran, with_application_name};

use crate::support::insert_product;

/// The roles an `on_connect` hook was told, in order.
type Seen = Arc<Mutex<Vec<Role>>>;

/// A hook that names each session after its role (`{name}_primary`, `{name}_replica_{n}`) and
/// notes the role.
fn naming_hook(
    name: &str,
    seen: &Seen,
) -> impl for<'c> Fn(
    &'c mut diesel_async::AsyncPgConnection,
    Role,
) -> futures_util::future::BoxFuture<'c, diesel::QueryResult<()>>
+ Send
+ Sync
+ 'static {
    let name = name.to_owned();
    let seen = Arc::clone(seen);
    move |conn, role| {
        seen.lock().unwrap().push(role);
        let session = match role {
            Role::Replica(index) => format!("{name}_replica_{index}"),
            _ => format!("{name}_primary"),
        };
        Box::pin(async move {
            conn.batch_execute(&format!("SET application_name = '{session}'"))
                .await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_connect_runs_once_per_new_connection_told_its_role() {
    let servers = servers().await;
    let name = unique("on_connect");
    let seen = Seen::default();
    let pool = servers
        .pool_builder(&name)
        .on_connect(naming_hook(&name, &seen))
        .build()
        .unwrap();
    for _ in 0..3 {
        for _ in 0..servers.replica_urls.len() {
            let mut conn = pool.get().await.unwrap();
            let ran = with_read_replica(true, where_ran(&mut conn)).await;
            assert!(servers.is_replica(&ran), "{ran:?}");
        }
        let mut conn = pool.get().await.unwrap();
        let (_, ran) = insert_product(&mut conn, &name).await;
        assert!(servers.is_primary(&ran));
    }
    // Connections were reused: one per server, each set up once, as the servers list them.
    let mut roles = seen.lock().unwrap().clone();
    roles.sort_by_key(|role| format!("{role}"));
    let mut expected = vec![Role::Primary];
    expected.extend((0..servers.replica_urls.len()).map(Role::Replica));
    assert_eq!(roles, expected);
    assert_eq!(
        servers
            .sessions(&servers.primary_url, &format!("{name}_primary"))
            .await,
        1
    );
    for (index, url) in servers.replica_urls.iter().enumerate() {
        let named = format!("{name}_replica_{index}");
        // One: the pool's probe has a session there too, which the hook did not rename.
        assert_eq!(servers.sessions(url, &named).await, 1, "{named} on {url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovering_pools_hook_is_told_the_role_each_node_has() {
    let servers = servers().await;
    let Some(cluster) = servers.local("a_discovering_pools_hook_is_told_the_role_each_node_has")
    else {
        return;
    };
    let name = unique("on_connect_nodes");
    let ports = std::iter::once(cluster.primary_port())
        .chain((0..cluster.replica_count()).map(|i| cluster.replica_port(i)))
        .map(|port| format!("127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let url = format!("postgres://postgres@{ports}/postgres?application_name={name}");
    let seen = Seen::default();
    let pool = RoutedPool::builder(url)
        .on_connect(naming_hook(&name, &seen))
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let (_, ran) = insert_product(&mut conn, &name).await;
    assert!(servers.is_primary(&ran));
    let mut reader = pool.get().await.unwrap();
    let ran = with_read_replica(true, where_ran(&mut reader)).await;
    // Node 0 is the primary; node n + 1 is replica n.
    let node = servers
        .replica_index(&ran)
        .expect("a replica served the read")
        + 1;
    let roles = seen.lock().unwrap().clone();
    assert_eq!(roles, vec![Role::Primary, Role::Replica(node)]);
    let replica_url = &servers.replica_urls[node - 1];
    let named = format!("{name}_replica_{node}");
    assert_eq!(servers.sessions(replica_url, &named).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_on_connect_fails_that_connection_clearly() {
    let servers = servers().await;
    let pool = servers
        .pool_builder(&unique("on_connect_fails"))
        .on_connect(|conn, role| {
            Box::pin(async move {
                if role == Role::Primary {
                    conn.batch_execute("SELECT no_such_function()").await
                } else {
                    Ok(())
                }
            })
        })
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let ran = with_read_replica(true, where_ran(&mut conn)).await;
    assert!(servers.is_replica(&ran), "replicas are unaffected: {ran:?}");
    let error = diesel::sql_query("DELETE FROM products WHERE name = 'no such product'")
        .execute(&mut conn)
        .await
        .unwrap_err();
    match Error::from_diesel(&error) {
        Some(Error::Checkout {
            role: Role::Primary,
            source:
                CheckoutError::Connect(ConnectError::OnConnect {
                    role: Role::Primary,
                    ..
                }),
            ..
        }) => {}
        other => panic!("expected the hook's failure, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("the on_connect hook failed on a new primary connection")
            && message.contains("no_such_function"),
        "{message}"
    );
}

/// A password that the test rotates, and how often it was asked for.
#[derive(Clone, Default)]
struct Vault {
    password: Arc<Mutex<Option<String>>>,
    asked: Arc<Mutex<Vec<Login>>>,
}

impl Vault {
    fn set(&self, password: Option<&str>) {
        *self.password.lock().unwrap() = password.map(str::to_owned);
    }

    fn asked(&self) -> usize {
        self.asked.lock().unwrap().len()
    }

    fn provider(&self) -> impl routing_core::Credentials {
        let vault = self.clone();
        move |login: Login| {
            let vault = vault.clone();
            async move {
                vault.asked.lock().unwrap().push(login);
                vault
                    .password
                    .lock()
                    .unwrap()
                    .clone()
                    .ok_or_else(|| std::io::Error::other("the vault is sealed"))
            }
        }
    }
}

/// A private cluster whose role `app` logs in with the password `first`.
async fn password_cluster(test: &str) -> Option<LocalCluster> {
    servers().await.local(test)?;
    let cluster = LocalCluster::builder()
        .password_auth(true)
        .start()
        .await
        .expect("start a cluster with password logins");
    let mut admin = routing_core::Migrator::connect(&cluster.primary_url())
        .await
        .expect("connect as postgres");
    admin
        .run_pending(routing_fixtures::MIGRATIONS)
        .await
        .expect("migrate");
    drop(admin);
    let mut conn = <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(
        &cluster.primary_url(),
    )
    .await
    .expect("connect as postgres");
    conn.batch_execute(
        "CREATE ROLE app LOGIN PASSWORD 'first'; \
         GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO app; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app",
    )
    .await
    .expect("create the role app");
    cluster
        .wait_for_replicas()
        .await
        .expect("replicas catch up");
    Some(cluster)
}

/// `url` logging in as `app`, without a password.
fn as_app(url: &str, name: &str) -> String {
    with_application_name(&url.replacen("postgres@", "app@", 1), name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_is_picked_up_by_the_next_new_connection() {
    let Some(cluster) =
        password_cluster("a_rotated_password_is_picked_up_by_the_next_new_connection").await
    else {
        return;
    };
    let name = unique("rotation");
    let vault = Vault::default();
    vault.set(Some("first"));
    let pool = RoutedPool::builder(as_app(&cluster.primary_url(), &name))
        .replicas(cluster.replica_urls().iter().map(|url| as_app(url, &name)))
        .credentials(vault.provider())
        .health_check(routing_core::HealthCheck::new(
            Duration::from_millis(200),
            Duration::from_secs(1),
        ))
        .build()
        .unwrap();
    pool.check()
        .await
        .expect("check logs in with the provider's password");

    // One connection to the primary, held, and reads on the replicas.
    let mut writer = pool.get().await.unwrap();
    let (_, ran) = insert_product(&mut writer, &name).await;
    assert_eq!(ran.port, i32::from(cluster.primary_port()));
    assert!(!ran.in_recovery);
    let mut reader = pool.get().await.unwrap();
    let ran = with_read_replica(true, where_ran(&mut reader)).await;
    assert!(ran.in_recovery, "{ran:?}");
    drop(reader);

    // Rotate on the server: open connections stay, new logins need the new password.
    let mut admin = <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(
        &cluster.primary_url(),
    )
    .await
    .unwrap();
    admin
        .batch_execute("ALTER ROLE app PASSWORD 'second'")
        .await
        .unwrap();
    cluster.wait_for_replicas().await.unwrap();
    let (_, ran) = insert_product(&mut writer, &name).await;
    assert!(!ran.in_recovery, "the open connection still works");

    // A second primary connection while the provider still has the old password: refused,
    // and the password appears nowhere.
    let asked = vault.asked();
    let mut second = pool.get().await.unwrap();
    let error = diesel::sql_query("DELETE FROM products WHERE name = 'no such product'")
        .execute(&mut second)
        .await
        .unwrap_err();
    assert!(vault.asked() > asked, "the provider was asked again");
    let message = error.to_string();
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(!message.contains("first") && !format!("{error:?}").contains("first"));

    // The provider rotates too: the next new connection logs in.
    vault.set(Some("second"));
    let (_, ran) = insert_product(&mut second, &name).await;
    assert!(!ran.in_recovery);
    drop((writer, second));

    // The probe asks the provider too: its sessions on the replicas log in as app.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = pool.status();
    for replica in &status.servers[1..] {
        assert!(replica.healthy && replica.latency.is_some(), "{status}");
    }
    for url in cluster.replica_urls() {
        let probes: i64 = servers_count(&url, "routing-core health probe", "app").await;
        assert!(probes >= 1, "no probe session as app on {url}");
    }
    pool.check().await.expect("check with the rotated password");

    // A provider that fails: a typed error naming the login, never a password.
    vault.set(None);
    let fresh = RoutedPool::builder(as_app(&cluster.primary_url(), &name))
        .credentials(vault.provider())
        .build()
        .unwrap();
    let error = fresh.check().await.unwrap_err();
    match &error {
        Error::Connect {
            source: ConnectError::Credentials { login, .. },
            ..
        } => {
            assert_eq!(login.user, "app");
            assert_eq!(login.port, cluster.primary_port());
        }
        other => panic!("expected the provider's failure, got {other:?}"),
    }
    assert!(
        error
            .to_string()
            .contains("cannot get the password for app@127.0.0.1:")
            && error.to_string().contains("the vault is sealed"),
        "{error}"
    );
}

/// How many sessions of `user` named `application_name` are open on the server at `url`.
async fn servers_count(url: &str, application_name: &str, user: &str) -> i64 {
    use diesel::sql_types::{BigInt, Text};
    use diesel_async::AsyncConnection;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .unwrap();
    diesel::select(
        diesel::dsl::sql::<BigInt>(
            "(SELECT count(*) FROM pg_stat_activity WHERE application_name = ",
        )
        .bind::<Text, _>(application_name)
        .sql(" AND usename = ")
        .bind::<Text, _>(user)
        .sql(")"),
    )
    .get_result(&mut conn)
    .await
    .unwrap()
}
