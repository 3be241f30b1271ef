use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::MigrationHarness;

use crate::error::{BuildError, Error, Role};
use crate::servers::{RoutedPool, catalog, connect};
use crate::url::{DatabaseUrl, RedactedUrl};

type BlockingConnection = AsyncConnectionWrapper<AsyncPgConnection>;

/// Runs diesel migrations on the primary, and only there.
///
/// [`Migrator::connect`] refuses a server for which `pg_is_in_recovery()` is true, so migrations
/// can never be pointed at a standby by mistake. Migrations run on a plain connection, never
/// through the router (whose `SELECT` of applied versions could otherwise go to a replica).
///
/// ```no_run
/// # async fn run() -> Result<(), routing_core::Error> {
/// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
/// use routing_core::Migrator;
///
/// const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");
///
/// let mut migrator = Migrator::connect("postgres://app@primary/app").await?;
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
    /// Connects to the primary at `primary_url` and checks that it is not a standby. The URL's
    /// `sslmode` and `sslrootcert` apply as for a pool's connections.
    ///
    /// # Errors
    ///
    /// An invalid URL, a failed connection, or [`Error::PrimaryIsStandby`].
    pub async fn connect(primary_url: &str) -> Result<Self, Error> {
        Self::open(parse(primary_url)?).await
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
        Self::open(parse(primary_url)?.with_tls_config(Some(tls_config))).await
    }

    /// Connects to `url` and refuses a standby.
    async fn open(url: DatabaseUrl) -> Result<Self, Error> {
        let mut conn = connect::open(&url, None)
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

/// `primary_url`, validated.
fn parse(primary_url: &str) -> Result<DatabaseUrl, BuildError> {
    DatabaseUrl::parse(primary_url)
        .map_err(|source| BuildError::invalid_url("primary", primary_url, source))
}

impl RoutedPool {
    /// Applies every pending migration of `source` on this pool's primary, on a connection of its
    /// own (see [`Migrator`]) made like the pool's, TLS included; returns the names applied.
    ///
    /// # Errors
    ///
    /// As [`Migrator::connect`] and [`Migrator::run_pending`].
    pub async fn run_pending_migrations<S>(&self, source: S) -> Result<Vec<String>, Error>
    where
        S: MigrationSource<Pg> + Send + 'static,
    {
        Migrator::open(self.shared().primary().database_url().clone())
            .await?
            .run_pending(source)
            .await
    }
}
