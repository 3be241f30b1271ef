//! The systems under test, behind one enum: each serves `read(id)` and `write(id)`, taking a
//! fresh connection from its pool per request and returning it afterwards, as a web handler does.
//! Three are async (diesel-async); two are synchronous diesel, whose requests run on blocking
//! threads ([`System::request_blocking`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use diesel::ConnectionError;

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnectionCore, AsyncPgConnection, RunQueryDsl};
use routing_core::rustls::pki_types::CertificateDer;
use routing_core::rustls::pki_types::pem::PemObject;
use routing_core::rustls::{self, ClientConfig, RootCertStore};
use routing_core::{RoutedPool, with_read_replica};
use routing_fixtures::products;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::BoxError;
use crate::blocking::SyncBaseline;

/// How long a checkout may wait for a free connection, or a new connection take, in every pool:
/// the `RoutedPool` defaults, applied to the plain pools too.
pub(crate) const POOL_TIMEOUT: Duration = Duration::from_secs(5);

/// Which system, for the command line and the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub(crate) enum SystemKind {
    /// Hand-written: one plain deadpool pool per server, round robin over the replica pools.
    Baseline,
    /// The same hand-written baseline again, on pools of its own: an A/A control, whose ratio
    /// to `baseline` is the spread of the measurement itself.
    BaselineTwin,
    /// `routing_core::RoutedPool`, reads in a `with_read_replica(true, ..)` scope.
    Routed,
    /// pgpool-II in front of the cluster, one plain deadpool pool to it.
    Pgpool,
    /// `RoutedPool` with `transaction_pooler(true)`: every statement unnamed, none cached.
    RoutedUnnamed,
    /// The baseline over TLS (the servers' TLS URLs).
    BaselineTls,
    /// The router over TLS.
    RoutedTls,
    /// Synchronous diesel, hand-written: one r2d2 pool of `PgConnection`s per server, round
    /// robin over the replica pools.
    SyncBaseline,
    /// The same synchronous baseline again, on pools of its own: the A/A control of the
    /// synchronous systems.
    SyncBaselineTwin,
    /// `routing_core::sync::RoutedPool`, reads in a `with_read_replica_sync(true, ..)` scope.
    SyncRouted,
}

impl SystemKind {
    /// Every system, in report order; each baseline before the systems compared with it.
    pub(crate) const ALL: [SystemKind; 10] = [
        SystemKind::Baseline,
        SystemKind::BaselineTwin,
        SystemKind::Routed,
        SystemKind::Pgpool,
        SystemKind::RoutedUnnamed,
        SystemKind::BaselineTls,
        SystemKind::RoutedTls,
        SystemKind::SyncBaseline,
        SystemKind::SyncBaselineTwin,
        SystemKind::SyncRouted,
    ];

    /// The system this one's ratios are measured against: the synchronous baseline for the
    /// synchronous systems, the async one for the others.
    pub(crate) fn baseline(self) -> SystemKind {
        match self {
            SystemKind::SyncBaseline | SystemKind::SyncBaselineTwin | SystemKind::SyncRouted => {
                SystemKind::SyncBaseline
            }
            _ => SystemKind::Baseline,
        }
    }
}

impl fmt::Display for SystemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SystemKind::Baseline => "baseline",
            SystemKind::BaselineTwin => "baseline-twin",
            SystemKind::Routed => "routed",
            SystemKind::Pgpool => "pgpool",
            SystemKind::RoutedUnnamed => "routed-unnamed",
            SystemKind::BaselineTls => "baseline-tls",
            SystemKind::RoutedTls => "routed-tls",
            SystemKind::SyncBaseline => "sync-baseline",
            SystemKind::SyncBaselineTwin => "sync-baseline-twin",
            SystemKind::SyncRouted => "sync-routed",
        })
    }
}

/// One request's operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Op {
    /// The point `SELECT` by primary key.
    Read,
    /// The single-row `UPDATE` by primary key.
    Write,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
        })
    }
}

/// How the plain deadpool pools (baseline and pgpool) check a connection at checkout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Recycling {
    /// diesel-async's default: a `SELECT 1` round trip on every checkout of a pooled connection.
    Verified,
    /// Only a local check (no round trip), as `RoutedPool` does for its replica pools.
    Fast,
}

impl fmt::Display for Recycling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Recycling::Verified => "verified",
            Recycling::Fast => "fast",
        })
    }
}

/// The servers a system is built over.
#[derive(Clone, Debug)]
pub(crate) struct Servers {
    /// The primary's URL.
    pub(crate) primary: String,
    /// The replicas' URLs.
    pub(crate) replicas: Vec<String>,
    /// pgpool-II's URL, when it runs.
    pub(crate) pgpool: Option<String>,
    /// The same servers over TLS, for the `-tls` systems.
    pub(crate) tls: Option<TlsServers>,
}

/// Servers' TLS URLs (`sslmode=verify-full`) and the CA that signed their certificates: the
/// plain pools connect over rustls with it, verifying chain and host name as the router does.
#[derive(Clone, Debug)]
pub(crate) struct TlsServers {
    pub(crate) primary: String,
    pub(crate) replicas: Vec<String>,
    pub(crate) ca: PathBuf,
}

/// A system under test, with pools of `max_size` connections per server.
pub(crate) enum System {
    /// Hand-written routing over plain pools.
    Baseline(Baseline),
    /// The router.
    Routed(RoutedPool),
    /// One plain pool to pgpool-II, which routes.
    Pgpool(Pool<AsyncPgConnection>),
    /// Hand-written routing over plain r2d2 pools.
    SyncBaseline(SyncBaseline),
    /// The synchronous router.
    SyncRouted(routing_core::sync::RoutedPool),
}

/// The hand-written baseline: what applications do without a router.
pub(crate) struct Baseline {
    primary: Pool<AsyncPgConnection>,
    replicas: Vec<Pool<AsyncPgConnection>>,
    next: AtomicUsize,
}

impl System {
    /// Builds `kind` over `servers`, every pool at most `max_size` connections (at least 1).
    /// Nothing connects until the first request.
    pub(crate) fn build(
        kind: SystemKind,
        servers: &Servers,
        max_size: usize,
        recycling: Recycling,
    ) -> Result<System, BoxError> {
        let max_size = max_size.max(1);
        if servers.replicas.is_empty() {
            return Err("the systems under test need at least one replica".into());
        }
        let over_tls = matches!(kind, SystemKind::BaselineTls | SystemKind::RoutedTls);
        let (primary, replicas, tls) = match (&servers.tls, over_tls) {
            (_, false) => (&servers.primary, &servers.replicas, None),
            (Some(tls), true) => (&tls.primary, &tls.replicas, Some(tls_config(&tls.ca)?)),
            (None, true) => return Err("the servers have no TLS URLs".into()),
        };
        let plain = |url: &str| plain_pool(url, max_size, recycling, tls.clone());
        let routed = |unnamed: bool| {
            RoutedPool::builder(primary.clone())
                .replicas(replicas.iter().cloned())
                .max_size(max_size)
                // The primary's checkouts as the plain pools' (replica checkouts never ask).
                .verify_primary_checkouts(recycling == Recycling::Verified)
                .transaction_pooler(unnamed)
                .build()
        };
        Ok(match kind {
            SystemKind::Baseline | SystemKind::BaselineTwin | SystemKind::BaselineTls => {
                System::Baseline(Baseline {
                    primary: plain(primary)?,
                    replicas: replicas
                        .iter()
                        .map(|url| plain(url))
                        .collect::<Result<_, _>>()?,
                    next: AtomicUsize::new(0),
                })
            }
            SystemKind::Routed | SystemKind::RoutedTls => System::Routed(routed(false)?),
            SystemKind::RoutedUnnamed => System::Routed(routed(true)?),
            SystemKind::Pgpool => {
                let url = servers
                    .pgpool
                    .as_deref()
                    .ok_or("pgpool-II is not running")?;
                System::Pgpool(plain(url)?)
            }
            SystemKind::SyncBaseline | SystemKind::SyncBaselineTwin => {
                System::SyncBaseline(SyncBaseline::new(servers, max_size, recycling))
            }
            SystemKind::SyncRouted => System::SyncRouted(
                routing_core::sync::RoutedPool::builder(servers.primary.clone())
                    .replicas(servers.replicas.iter().cloned())
                    .max_size(max_size)
                    .verify_primary_checkouts(recycling == Recycling::Verified)
                    .build_sync()?,
            ),
        })
    }

    /// The router's view of its servers, for the routed system.
    pub(crate) fn routed_status(&self) -> Option<routing_core::PoolStatus> {
        match self {
            System::Routed(pool) => Some(pool.status()),
            _ => None,
        }
    }

    /// Runs one request of `op` for the product `id`.
    pub(crate) async fn request(&self, op: Op, id: i64) -> Result<(), BoxError> {
        match op {
            Op::Read => self.read(id).await,
            Op::Write => self.write(id).await,
        }
    }

    /// The point `SELECT` of product `id` on a replica.
    pub(crate) async fn read(&self, id: i64) -> Result<(), BoxError> {
        match self {
            System::Baseline(baseline) => {
                let index = baseline.next.fetch_add(1, Ordering::Relaxed) % baseline.replicas.len();
                let mut conn = baseline.replicas[index].get().await?;
                point_select(&mut conn, id).await?;
            }
            System::Routed(pool) => {
                // The scope a web middleware sets for a GET request; it covers the checkout.
                with_read_replica(true, async {
                    let mut conn = pool.get().await?;
                    point_select(&mut conn, id).await?;
                    Ok::<_, BoxError>(())
                })
                .await?;
            }
            System::Pgpool(pool) => {
                let mut conn = pool.get().await?;
                point_select(&mut conn, id).await?;
            }
            System::SyncBaseline(_) | System::SyncRouted(_) => {
                return Err("a synchronous system: use request_blocking".into());
            }
        }
        Ok(())
    }

    /// The `UPDATE` of product `id`, on the primary.
    pub(crate) async fn write(&self, id: i64) -> Result<(), BoxError> {
        match self {
            System::Baseline(baseline) => {
                let mut conn = baseline.primary.get().await?;
                bump_price(&mut conn, id).await?;
            }
            System::Routed(pool) => {
                // The same replica scope as the reads: the router sends the UPDATE to the
                // primary by itself.
                with_read_replica(true, async {
                    let mut conn = pool.get().await?;
                    bump_price(&mut conn, id).await?;
                    Ok::<_, BoxError>(())
                })
                .await?;
            }
            System::Pgpool(pool) => {
                let mut conn = pool.get().await?;
                bump_price(&mut conn, id).await?;
            }
            System::SyncBaseline(_) | System::SyncRouted(_) => {
                return Err("a synchronous system: use request_blocking".into());
            }
        }
        Ok(())
    }
}

/// A plain diesel-async deadpool pool for `url`, as an application builds it by hand: over
/// rustls with `tls`, as diesel-async's documentation shows (`try_from_client_and_connection`).
fn plain_pool(
    url: &str,
    max_size: usize,
    recycling: Recycling,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Pool<AsyncPgConnection>, BoxError> {
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    config.recycling_method = match recycling {
        Recycling::Verified => RecyclingMethod::Verified,
        Recycling::Fast => RecyclingMethod::Fast,
    };
    if let Some(tls) = tls {
        config.custom_setup = Box::new(move |url| {
            // The URL's `sslrootcert` and `verify-full` are libpq's, unknown to tokio-postgres.
            let parsed = routing_core::__private::connection_config(url);
            let tls = MakeRustlsConnect::new((*tls).clone());
            Box::pin(async move {
                let parsed = parsed
                    .ok_or_else(|| ConnectionError::InvalidConnectionUrl("invalid URL".into()))?;
                let (client, connection) = parsed
                    .connect(tls)
                    .await
                    .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
                AsyncPgConnection::try_from_client_and_connection(client, connection).await
            })
        });
    }
    let manager = AsyncDieselConnectionManager::new_with_config(url, config);
    Ok(Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

/// A rustls client configuration that trusts the CA in the PEM file `ca`.
fn tls_config(ca: &Path) -> Result<Arc<ClientConfig>, BoxError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// `SELECT id, name, price_cents FROM products WHERE id = $1`.
async fn point_select<C>(conn: &mut C, id: i64) -> QueryResult<(i64, String, i64)>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    products::table
        .find(id)
        .select((products::id, products::name, products::price_cents))
        .get_result(conn)
        .await
}

/// `UPDATE products SET price_cents = price_cents + 1 WHERE id = $1`.
async fn bump_price<C>(conn: &mut C, id: i64) -> QueryResult<usize>
where
    C: AsyncConnectionCore<Backend = Pg> + Send,
{
    diesel::update(products::table.find(id))
        .set(products::price_cents.eq(products::price_cents + 1))
        .execute(conn)
        .await
}
