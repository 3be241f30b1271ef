//! The cluster under test: a throwaway primary with two streaming replicas, migrated and seeded.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use routing_cluster::{ClusterBuilder, LocalCluster};
use routing_core::{Migrator, RoutedPool};
use routing_fixtures::products;

use crate::BoxError;

/// Rows seeded into `products`.
pub(crate) const PRODUCTS: i64 = 10_000;

/// Replicas of the cluster.
pub(crate) const REPLICAS: usize = 2;

/// The ids of the seeded products, from which each request picks one at random.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdRange {
    first: i64,
    last: i64,
}

impl IdRange {
    /// A uniformly random id of the range.
    pub(crate) fn random(self, rng: &mut fastrand::Rng) -> i64 {
        rng.i64(self.first..=self.last)
    }
}

/// Starts the cluster `builder` describes (with [`REPLICAS`] replicas), migrates it, seeds
/// `products` and waits until the replicas have replayed the seed.
pub(crate) async fn start(builder: ClusterBuilder) -> Result<(LocalCluster, IdRange), BoxError> {
    let cluster = builder
        .replicas(REPLICAS)
        .start()
        .await
        .map_err(|e| format!("starting the local cluster failed: {e}"))?;
    let ids = prepare(&cluster).await?;
    Ok((cluster, ids))
}

/// Migrates and seeds the primary (over TLS when the cluster wants it: through the router's
/// own connections, whose statements all go to the primary here), then waits for the replicas.
async fn prepare(cluster: &LocalCluster) -> Result<IdRange, BoxError> {
    let url = cluster.primary_url();
    Migrator::connect(&url)
        .await?
        .run_pending(routing_fixtures::MIGRATIONS)
        .await
        .map_err(|e| format!("migrating the primary failed: {e}"))?;

    let primary = RoutedPool::builder(url.clone()).max_size(1).build()?;
    let mut conn = primary
        .get()
        .await
        .map_err(|e| format!("connecting to the primary failed: {e}"))?;
    diesel::sql_query(format!(
        "INSERT INTO products (name, price_cents) \
         SELECT 'product ' || g, 100 + (g * 37) % 10000 FROM generate_series(1, {PRODUCTS}) AS g"
    ))
    .execute(&mut conn)
    .await
    .map_err(|e| format!("seeding products failed: {e}"))?;
    // Fresh statistics and visibility map: stable plans from the first request on.
    diesel::sql_query("VACUUM ANALYZE products")
        .execute(&mut conn)
        .await
        .map_err(|e| format!("VACUUM ANALYZE products failed: {e}"))?;
    let (count, first, last) = products::table
        .select((
            diesel::dsl::count_star(),
            diesel::dsl::min(products::id),
            diesel::dsl::max(products::id),
        ))
        .get_result::<(i64, Option<i64>, Option<i64>)>(&mut conn)
        .await
        .map_err(|e| format!("reading the seeded ids failed: {e}"))?;
    let ids = match (first, last) {
        (Some(first), Some(last)) if count == PRODUCTS && last - first + 1 == PRODUCTS => {
            IdRange { first, last }
        }
        _ => {
            return Err(format!(
                "products should hold {PRODUCTS} rows with consecutive ids after seeding, \
                 found {count} rows with ids {first:?}..={last:?}"
            )
            .into());
        }
    };
    cluster
        .wait_for_replicas()
        .await
        .map_err(|e| format!("waiting for the replicas to replay the seed failed: {e}"))?;
    Ok(ids)
}
