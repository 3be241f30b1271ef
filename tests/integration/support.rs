//! Rows and statements the tests share.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Integer};
use diesel_async::RunQueryDsl;
use routing_core::RoutedConnection;
use routing_migrate::products;
use routing_tests::{ServerId, inet_server_port, pg_is_in_recovery};

/// Where a raw statement ran, read from its own result columns.
#[derive(Debug, QueryableByName)]
pub(crate) struct RanOn {
    #[diesel(sql_type = Bool)]
    pub(crate) in_recovery: bool,
    #[diesel(sql_type = Integer)]
    pub(crate) port: i32,
}

impl RanOn {
    pub(crate) fn id(&self) -> ServerId {
        ServerId {
            port: self.port,
            in_recovery: self.in_recovery,
        }
    }
}

/// Inserts a product on `conn` and returns its id and the server that ran the insert.
pub(crate) async fn insert_product(conn: &mut RoutedConnection, name: &str) -> (i64, ServerId) {
    let (id, in_recovery, port) = diesel::insert_into(products::table)
        .values((products::name.eq(name), products::price_cents.eq(100_i64)))
        .returning((products::id, pg_is_in_recovery(), inet_server_port()))
        .get_result::<(i64, bool, i32)>(conn)
        .await
        .expect("insert a product");
    (id, ServerId { port, in_recovery })
}
