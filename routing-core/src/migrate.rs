use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::MigrationHarness;

use crate::config::RoutedPoolBuilder;
use crate::credentials::{Credentials, Provider};
use crate::error::{Error, Role};
use crate::servers::connect::{self, Open};
use crate::servers::{RoutedPool, catalog};
use crate::url::{DatabaseUrl, RedactedUrl};

mod target;

use target::Server;

type BlockingConnection = AsyncConnectionWrapper<AsyncPgConnection>;

/// Runs diesel migrations on the primary, and only there.
///
/// A target that designates the same server as a read replica given to
/// [`MigratorBuilder::refuse_replicas`] (or configured by the environment, for
/// [`Migrator::from_env`]) is refused before any connection is made. Once connected, a server
/// for which `pg_is_in_recovery()` is true is refused too, so migrations can never be pointed at
/// a standby by mistake. Migrations run on a plain connection, never through the router (whose
/// `SELECT` of applied versions could otherwise go to a replica).
///
/// ```no_run
/// # async fn run() -> Result<(), routing_core::Error> {
/// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
/// use routing_core::Migrator;
///
/// const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");
///
/// let mut migrator = Migrator::builder("postgres://app@primary/app")
///     .refuse_replicas(["postgres://app@replica-1/app", "postgres://app@replica-2/app"])
///     .connect()
///     .await?;
/// for name in migrator.run_pending(MIGRATIONS).await? {
///     println!("applied {name}");
/// }
/// # Ok(()) }
/// ```
pub struct Migrator {
    url: RedactedUrl,
    conn: Option<BlockingConnection>,
}

impl std::fmt::Debug for Migrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrator")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Migrator {
    /// Starts configuring a migrator for the primary at `primary_url`; see [`MigratorBuilder`].
    pub fn builder(primary_url: impl Into<String>) -> MigratorBuilder {
        MigratorBuilder {
            primary: primary_url.into(),
            replicas: Vec::new(),
            credentials: None,
            #[cfg(feature = "rustls")]
            tls_config: None,
        }
    }

    /// Connects to the primary at `primary_url` and checks that it is not a standby. The URL's
    /// `sslmode` and `sslrootcert` apply as for a pool's connections.
    ///
    /// # Errors
    ///
    /// An invalid URL, a failed connection, or [`Error::PrimaryIsStandby`].
    pub async fn connect(primary_url: &str) -> Result<Self, Error> {
        Self::builder(primary_url).connect().await
    }

    /// Connects to the primary that `DATABASE_URL` names, refusing it if it designates the same
    /// server as a replica that the environment configures, with the rules of
    /// [`RoutedPool::from_env`]: `ENABLE_READ_REPLICA`, `DATABASE_READ_REPLICA_URL`,
    /// `POSTGRES_READ_REPLICA_*`. See [`MigratorBuilder::from_vars`].
    ///
    /// # Errors
    ///
    /// As [`MigratorBuilder::from_vars`] and [`MigratorBuilder::connect`].
    pub async fn from_env() -> Result<Self, Error> {
        MigratorBuilder::from_vars(|name| std::env::var(name).ok())?
            .connect()
            .await
    }

    /// As [`Migrator::connect`], with `tls_config` as the TLS client configuration (see
    /// [`RoutedPoolBuilder::tls_config`](crate::RoutedPoolBuilder::tls_config)).
    ///
    /// # Errors
    ///
    /// As [`Migrator::connect`].
    #[cfg(feature = "rustls")]
    pub async fn connect_with_tls_config(
        primary_url: &str,
        tls_config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Self, Error> {
        Self::builder(primary_url)
            .tls_config(tls_config)
            .connect()
            .await
    }

    /// Connects to `url`, validated and checked against the replicas already, and refuses a
    /// standby. With a multi-host URL, the node that accepts writes now is the one used.
    async fn establish(url: DatabaseUrl, credentials: Option<Provider>) -> Result<Self, Error> {
        let url = url.read_write();
        let how = Open {
            credentials: credentials.as_ref(),
            ..Open::default()
        };
        let mut conn = connect::open(&url, how)
            .await
            .map_err(|source| Error::Connect {
                role: Role::Primary,
                url: url.redacted().clone(),
                source,
            })?;
        let in_recovery = catalog::in_recovery(&mut conn)
            .await
            .map_err(|source| Error::Query {
                role: Role::Primary,
                source,
            })?;
        if in_recovery {
            return Err(Error::PrimaryIsStandby {
                url: url.redacted().clone(),
            });
        }
        // Opened without unnamed statements: always diesel-async's connection.
        let conn = conn.into_prepared().ok_or_else(|| Error::Migration {
            url: url.redacted().clone(),
            source: "migrations need a session of their own, not a transaction pooler".into(),
        })?;
        let conn = tokio::task::spawn_blocking(move || BlockingConnection::from(conn))
            .await
            .map_err(|e| Error::Migration {
                url: url.redacted().clone(),
                source: Box::new(e),
            })?;
        Ok(Migrator {
            url: url.redacted().clone(),
            conn: Some(conn),
        })
    }

    /// The primary's URL, password redacted.
    pub fn url(&self) -> &RedactedUrl {
        &self.url
    }

    /// Applies every pending migration of `source`, in order; returns their names.
    ///
    /// # Errors
    ///
    /// The first migration that fails; those before it stay applied.
    pub async fn run_pending<S>(&mut self, source: S) -> Result<Vec<String>, Error>
    where
        S: MigrationSource<Pg> + Send + 'static,
    {
        self.blocking(move |conn| {
            let pending = conn.pending_migrations(source)?;
            let mut applied = Vec::with_capacity(pending.len());
            for migration in pending {
                conn.run_migration(&*migration)?;
                applied.push(migration.name().to_string());
            }
            Ok(applied)
        })
        .await
    }

    /// Reverts the most recently applied migration of `source`; returns its name.
    ///
    /// # Errors
    ///
    /// No migration is applied, it is not part of `source`, or its `down.sql` fails.
    pub async fn revert_last<S>(&mut self, source: S) -> Result<String, Error>
    where
        S: MigrationSource<Pg> + Send + 'static,
    {
        self.blocking(move |conn| {
            let applied = conn.applied_migrations()?;
            let last = applied.first().ok_or("no migration has been applied")?;
            let migrations = source.migrations()?;
            let migration = migrations
                .iter()
                .find(|m| m.name().version() == *last)
                .ok_or_else(|| {
                    format!("the applied migration {last} is not in the migration source")
                })?;
            conn.revert_migration(&**migration)?;
            Ok(migration.name().to_string())
        })
        .await
    }

    /// The versions of the applied migrations, newest first.
    ///
    /// # Errors
    ///
    /// The query fails.
    pub async fn applied(&mut self) -> Result<Vec<String>, Error> {
        self.blocking(|conn| {
            Ok(conn
                .applied_migrations()?
                .into_iter()
                .map(|version| version.to_string())
                .collect())
        })
        .await
    }

    /// The names of the migrations of `source` not applied yet, oldest first.
    ///
    /// # Errors
    ///
    /// The source or the query fails.
    pub async fn pending<S>(&mut self, source: S) -> Result<Vec<String>, Error>
    where
        S: MigrationSource<Pg> + Send + 'static,
    {
        self.blocking(move |conn| {
            Ok(conn
                .pending_migrations(source)?
                .into_iter()
                .map(|migration| migration.name().to_string())
                .collect())
        })
        .await
    }

    /// Runs `f` on the connection in a blocking task: diesel's migration harness is synchronous.
    async fn blocking<R, F>(&mut self, f: F) -> Result<R, Error>
    where
        F: FnOnce(&mut BlockingConnection) -> diesel::migration::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let url = self.url.clone();
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Migration {
            url: url.clone(),
            source,
        };
        let mut conn = self
            .conn
            .take()
            .ok_or_else(|| failed("an earlier migration task was lost".into()))?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = f(&mut conn);
            (conn, result)
        })
        .await
        .map_err(|e| failed(Box::new(e)))?;
        self.conn = Some(conn);
        result.map_err(failed)
    }
}

impl RoutedPool {
    /// Applies every pending migration of `source` on this pool's primary, on a connection of its
    /// own (see [`Migrator`]) made like the pool's, TLS included; returns the names applied. A
    /// primary that designates the same server as one of the pool's replicas is refused before
    /// connecting.
    ///
    /// # Errors
    ///
    /// As [`MigratorBuilder::connect`] and [`Migrator::run_pending`].
    pub async fn run_pending_migrations<S>(&self, source: S) -> Result<Vec<String>, Error>
    where
        S: MigrationSource<Pg> + Send + 'static,
    {
        let shared = self.shared();
        // A discovering pool's nodes include its primary: only the configured replicas of a
        // pool with a fixed primary are refused.
        let replicas = shared
            .replicas()
            .iter()
            .filter(|server| server.has_fixed_role())
            .map(|replica| replica.database_url().secret());
        let builder =
            Migrator::builder(shared.config().primary().expose()).refuse_replicas(replicas);
        let builder = match shared.config().credentials() {
            Some(credentials) => MigratorBuilder {
                credentials: Some(credentials.clone()),
                ..builder
            },
            None => builder,
        };
        #[cfg(feature = "rustls")]
        let builder = match shared.config().tls_config() {
            Some(tls_config) => builder.tls_config(std::sync::Arc::clone(tls_config)),
            None => builder,
        };
        builder.connect().await?.run_pending(source).await
    }
}

/// Configures a [`Migrator`]: the primary to migrate, and the read replicas it must not be.
///
/// [`connect`](Self::connect) refuses a primary URL that designates the same server as one of
/// the replicas (the same host and port, or one of them for a multi-host URL, and the same
/// database when both name one; `localhost`, `127.0.0.1` and `::1` count as one host) before
/// connecting anywhere, then refuses a server in recovery.
#[must_use]
pub struct MigratorBuilder {
    primary: String,
    replicas: Vec<String>,
    credentials: Option<Provider>,
    #[cfg(feature = "rustls")]
    tls_config: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for MigratorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigratorBuilder")
            .field("primary", &RedactedUrl::new(&self.primary))
            .field(
                "refused_replicas",
                &self
                    .replicas
                    .iter()
                    .map(|url| RedactedUrl::new(url))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl MigratorBuilder {
    /// A builder from variables looked up by `lookup` instead of the process environment: the
    /// primary is `DATABASE_URL`, and the replicas that the variables configure with the rules
    /// of [`RoutedPool::from_env`] are refused. Every URL is validated here.
    ///
    /// # Errors
    ///
    /// As [`RoutedPool::from_env`]: a missing `DATABASE_URL`, an `ENABLE_READ_REPLICA` other
    /// than `0` or `1`, replicas enabled without a replica URL or its parts, or an invalid URL.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let replicas: Vec<String> = RoutedPoolBuilder::from_vars(&lookup)?
            .replica_secrets()
            .map(str::to_owned)
            .collect();
        // `RoutedPoolBuilder::from_vars` succeeded, so `DATABASE_URL` is set.
        let primary = lookup("DATABASE_URL").unwrap_or_default();
        let builder = Migrator::builder(primary).refuse_replicas(replicas);
        builder.servers()?;
        Ok(builder)
    }

    /// Connects with `config` as the TLS client configuration (see
    /// [`RoutedPoolBuilder::tls_config`](crate::RoutedPoolBuilder::tls_config)) instead of one
    /// made from the URL's `sslmode` and `sslrootcert`.
    #[cfg(feature = "rustls")]
    pub fn tls_config(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// Asks `credentials` for the password instead of taking the URL's; see
    /// [`RoutedPoolBuilder::credentials`].
    pub fn credentials(mut self, credentials: impl Credentials) -> Self {
        self.credentials = Some(Provider(std::sync::Arc::new(credentials)));
        self
    }

    /// Adds read replicas to refuse: the primary URL must not designate the same server as any
    /// of them.
    pub fn refuse_replicas(mut self, urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.replicas.extend(urls.into_iter().map(Into::into));
        self
    }

    /// Checks the primary URL against the replicas, then connects and checks that the server is
    /// not a standby.
    ///
    /// # Errors
    ///
    /// An invalid URL; [`Error::TargetIsReplica`], with nothing connected to; a failed
    /// connection; or [`Error::PrimaryIsStandby`].
    pub async fn connect(self) -> Result<Migrator, Error> {
        let (primary, replicas) = self.servers()?;
        target::refuse_replicas(&primary, &replicas)?;
        #[cfg(feature = "rustls")]
        let url = primary.url.with_tls_config(self.tls_config);
        #[cfg(not(feature = "rustls"))]
        let url = primary.url;
        Migrator::establish(url, self.credentials).await
    }

    /// The primary and the replicas, validated.
    fn servers(&self) -> Result<(Server, Vec<Server>), Error> {
        let primary = Server::parse("primary", &self.primary)?;
        let replicas = self
            .replicas
            .iter()
            .enumerate()
            .map(|(index, url)| Server::parse(&format!("replica {index}"), url))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((primary, replicas))
    }
}

#[cfg(test)]
mod tests;
