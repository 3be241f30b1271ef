//! The synchronous systems' side: the hand-written r2d2 baseline, and the blocking requests of
//! both synchronous systems (diesel's `RunQueryDsl`, kept apart from the async systems').

use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::connection::LoadConnection;
use diesel::pg::Pg;
use diesel::r2d2::{self, ConnectionManager};
use diesel::{ExpressionMethods, PgConnection, QueryDsl, QueryResult, RunQueryDsl};
use routing_fixtures::products;

use crate::BoxError;
use crate::systems::{Op, POOL_TIMEOUT, Recycling, Servers, System};

/// A plain r2d2 pool of synchronous diesel connections.
type R2d2Pool = r2d2::Pool<ConnectionManager<PgConnection>>;

/// The hand-written synchronous baseline: what synchronous diesel applications do without a
/// router.
pub(crate) struct SyncBaseline {
    primary: R2d2Pool,
    replicas: Vec<R2d2Pool>,
    next: AtomicUsize,
}

impl SyncBaseline {
    /// One r2d2 pool per server of `servers`.
    pub(crate) fn new(servers: &Servers, max_size: usize, recycling: Recycling) -> Self {
        SyncBaseline {
            primary: r2d2_pool(&servers.primary, max_size, recycling),
            replicas: servers
                .replicas
                .iter()
                .map(|url| r2d2_pool(url, max_size, recycling))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl System {
    /// Whether the system's requests block: run them with [`System::request_blocking`].
    pub(crate) fn is_sync(&self) -> bool {
        matches!(self, System::SyncBaseline(_) | System::SyncRouted(_))
    }

    /// Runs one request of `op` for the product `id` on a synchronous system, blocking.
    pub(crate) fn request_blocking(&self, op: Op, id: i64) -> Result<(), BoxError> {
        match (self, op) {
            (System::SyncBaseline(baseline), Op::Read) => {
                let index = baseline.next.fetch_add(1, Ordering::Relaxed) % baseline.replicas.len();
                let mut conn = baseline.replicas[index].get()?;
                point_select_blocking(&mut *conn, id)?;
            }
            (System::SyncBaseline(baseline), Op::Write) => {
                let mut conn = baseline.primary.get()?;
                bump_price_blocking(&mut *conn, id)?;
            }
            // The scope a web middleware's blocking handler runs in; it covers the checkout. The
            // router sends the UPDATE to the primary by itself.
            (System::SyncRouted(pool), op) => {
                routing_core::with_read_replica_sync(true, || {
                    let mut conn = pool.get()?;
                    match op {
                        Op::Read => {
                            point_select_blocking(&mut conn, id)?;
                        }
                        Op::Write => {
                            bump_price_blocking(&mut conn, id)?;
                        }
                    }
                    Ok::<_, BoxError>(())
                })?;
            }
            _ => return Err("not a synchronous system".into()),
        }
        Ok(())
    }
}

/// A plain r2d2 pool of `PgConnection`s for `url`, as a synchronous application builds it by
/// hand: connections opened on demand (as the router's), checked with a `SELECT 1` at checkout
/// only with `verified` recycling.
fn r2d2_pool(url: &str, max_size: usize, recycling: Recycling) -> R2d2Pool {
    r2d2::Pool::builder()
        .max_size(u32::try_from(max_size).unwrap_or(u32::MAX))
        .min_idle(Some(0))
        .connection_timeout(POOL_TIMEOUT)
        .test_on_check_out(recycling == Recycling::Verified)
        .build_unchecked(ConnectionManager::new(url))
}

/// `SELECT id, name, price_cents FROM products WHERE id = $1`, synchronously.
fn point_select_blocking<C>(conn: &mut C, id: i64) -> QueryResult<(i64, String, i64)>
where
    C: LoadConnection<Backend = Pg>,
{
    products::table
        .find(id)
        .select((products::id, products::name, products::price_cents))
        .get_result(conn)
}

/// `UPDATE products SET price_cents = price_cents + 1 WHERE id = $1`, synchronously.
fn bump_price_blocking<C>(conn: &mut C, id: i64) -> QueryResult<usize>
where
    C: diesel::Connection<Backend = Pg>,
{
    diesel::update(products::table.find(id))
        .set(products::price_cents.eq(products::price_cents + 1))
        .execute(conn)
}
