//! A pool that asks a credentials provider for the password of each new connection, on a
//! throwaway cluster whose logins need a password: the password is rotated on the server and in
//! the provider's store, and the next new connection logs in with the new one.
//!
//! ```sh
//! cargo run -p routing-core --example credentials
//! ```
//!
//! It needs the PostgreSQL server programs, as the workspace's tests do.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use routing_cluster::LocalCluster;
use routing_core::dsl::{inet_server_port, pg_is_in_recovery};
use routing_core::{Login, RoutedConnection, RoutedPool, with_read_replica};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Stands for a secrets manager, or an IAM token signer: the current password.
#[derive(Clone)]
struct SecretStore(Arc<Mutex<String>>);

impl SecretStore {
    async fn password(&self, login: &Login) -> Result<String, BoxError> {
        println!("  provider asked for the password of {login}");
        Ok(self.0.lock().map_err(|_| "the store is poisoned")?.clone())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("credentials example: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    println!("starting a throwaway cluster whose logins need a password ...");
    let cluster = LocalCluster::builder().password_auth(true).start().await?;
    let mut admin = AsyncPgConnection::establish(&cluster.primary_url()).await?;
    admin
        .batch_execute(
            "CREATE ROLE app LOGIN PASSWORD 'first-secret'; \
             CREATE TABLE visits (id bigserial PRIMARY KEY, at timestamptz DEFAULT now()); \
             GRANT SELECT, INSERT ON visits TO app; \
             GRANT USAGE ON SEQUENCE visits_id_seq TO app",
        )
        .await?;
    cluster.wait_for_replicas().await?;

    let store = SecretStore(Arc::new(Mutex::new("first-secret".to_owned())));
    let provider = {
        let store = store.clone();
        move |login: Login| {
            let store = store.clone();
            async move { store.password(&login).await }
        }
    };
    // No password in the URLs: the provider gives it.
    let as_app = |url: String| url.replacen("postgres@", "app@", 1);
    let pool = RoutedPool::builder(as_app(cluster.primary_url()))
        .replicas(cluster.replica_urls().into_iter().map(as_app))
        .credentials(provider)
        .build()?;
    pool.check().await?;
    println!("checked every server");

    let mut first = pool.get().await?;
    println!("a read and a write on new connections:");
    show("  read", with_read_replica(true, ran_on(&mut first)).await?);
    show("  write", write(&mut first).await?);

    println!("rotating the password on the server and in the store ...");
    admin
        .batch_execute("ALTER ROLE app PASSWORD 'second-secret'")
        .await?;
    cluster.wait_for_replicas().await?;
    *store.0.lock().map_err(|_| "the store is poisoned")? = "second-secret".to_owned();

    show(
        "  the open connection still writes",
        write(&mut first).await?,
    );
    let mut second = pool.get().await?;
    show(
        "  a new connection logs in with the new password",
        write(&mut second).await?,
    );
    Ok(())
}

/// Where a statement ran, as the server says.
async fn ran_on(conn: &mut RoutedConnection) -> Result<(bool, i32), BoxError> {
    Ok(diesel::select((pg_is_in_recovery(), inet_server_port()))
        .get_result(conn)
        .await?)
}

/// Where a statement ran, from its own result.
#[derive(diesel::QueryableByName)]
struct Ran {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    in_recovery: bool,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    port: i32,
}

/// An insert, and where it ran.
async fn write(conn: &mut RoutedConnection) -> Result<(bool, i32), BoxError> {
    let ran: Ran = diesel::sql_query(
        "INSERT INTO visits DEFAULT VALUES \
         RETURNING pg_is_in_recovery() AS in_recovery, inet_server_port() AS port",
    )
    .get_result(conn)
    .await?;
    Ok((ran.in_recovery, ran.port))
}

fn show(what: &str, (in_recovery, port): (bool, i32)) {
    let role = if in_recovery {
        "a replica"
    } else {
        "the primary"
    };
    println!("{what}: ran on {role} (port {port})");
}
