//! One handler per usage pattern of the original design.

use axum::Json;
use axum::extract::{Path, State};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use routing_core::dsl::{inet_server_port, pg_is_in_recovery};
use routing_core::{ReadReplicaControl, RoutedPool, use_read_replica};
use routing_fixtures::{OrderStatus, orders, products};
use serde::{Deserialize, Serialize};

use crate::error::AppError;
use crate::reply::{QueryRecord, Reply};

type Result<T> = std::result::Result<Json<Reply<T>>, AppError>;

/// A product, as the handlers return it.
#[derive(Debug, Clone, Serialize, Deserialize, Queryable, Selectable)]
#[diesel(table_name = products)]
pub(crate) struct Product {
    id: i64,
    name: String,
    price_cents: i64,
}

/// An order, as the handlers return it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Order {
    id: i64,
    product_id: i64,
    quantity: i32,
    status: &'static str,
}

type OrderRow = (i64, i64, i32, OrderStatus);

fn order((id, product_id, quantity, status): OrderRow) -> Order {
    Order {
        id,
        product_id,
        quantity,
        status: status.label(),
    }
}

const ORDER_COLUMNS: (
    orders::id,
    orders::product_id,
    orders::quantity,
    orders::status,
) = (
    orders::id,
    orders::product_id,
    orders::quantity,
    orders::status,
);

/// `GET /products`: the default policy, reads from a replica (`use_read_replica = True`).
#[derive(ReadReplicaControl)]
pub(crate) struct ListProducts;

pub(crate) async fn list_products(State(pool): State<RoutedPool>) -> Result<Vec<Product>> {
    let mut conn = pool.get().await?;
    let rows: Vec<(Product, bool, i32)> = products::table
        .order(products::id)
        .limit(100)
        .select((
            Product::as_select(),
            pg_is_in_recovery(),
            inet_server_port(),
        ))
        .load(&mut conn)
        .await?;
    let query = QueryRecord::from_rows("list products", &rows);
    let data = rows.into_iter().map(|(product, _, _)| product).collect();
    Ok(Json(Reply::new("ListProducts", data, vec![query])))
}

/// `GET /products/{id}`: a dynamic policy (the original's `get_use_read_replica`): a replica,
/// unless the client asks for fresh data with `?fresh=1`.
pub(crate) struct ProductDetail;

impl ReadReplicaControl for ProductDetail {
    fn use_read_replica(request: &axum::http::request::Parts) -> bool {
        !request
            .uri
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair == "fresh=1"))
    }
}

pub(crate) async fn product_detail(
    State(pool): State<RoutedPool>,
    Path(id): Path<i64>,
) -> Result<Product> {
    let mut conn = pool.get().await?;
    let (product, in_recovery, port) = products::table
        .find(id)
        .select((
            Product::as_select(),
            pg_is_in_recovery(),
            inet_server_port(),
        ))
        .first::<(Product, bool, i32)>(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| AppError::not_found("product"))?;
    let query = QueryRecord::new("find product", in_recovery, port);
    Ok(Json(Reply::new("ProductDetail", product, vec![query])))
}

/// The body of `POST /products`.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct NewProduct {
    name: String,
    price_cents: i64,
}

/// `POST /products`: a write, on the primary.
pub(crate) async fn create_product(
    State(pool): State<RoutedPool>,
    Json(new): Json<NewProduct>,
) -> Result<Product> {
    let mut conn = pool.get().await?;
    let (product, in_recovery, port) = diesel::insert_into(products::table)
        .values((
            products::name.eq(&new.name),
            products::price_cents.eq(new.price_cents),
        ))
        .returning((
            Product::as_returning(),
            pg_is_in_recovery(),
            inet_server_port(),
        ))
        .get_result::<(Product, bool, i32)>(&mut conn)
        .await?;
    let query = QueryRecord::new("insert product", in_recovery, port);
    Ok(Json(Reply::new("CreateProduct", product, vec![query])))
}

/// The body of `PUT /products/{id}`.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct PriceChange {
    price_cents: i64,
}

/// `PUT /products/{id}`: a write, on the primary, whatever the route's read policy says.
pub(crate) async fn update_product(
    State(pool): State<RoutedPool>,
    Path(id): Path<i64>,
    Json(change): Json<PriceChange>,
) -> Result<Product> {
    let mut conn = pool.get().await?;
    let (product, in_recovery, port) = diesel::update(products::table.find(id))
        .set(products::price_cents.eq(change.price_cents))
        .returning((
            Product::as_returning(),
            pg_is_in_recovery(),
            inet_server_port(),
        ))
        .get_result::<(Product, bool, i32)>(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| AppError::not_found("product"))?;
    let query = QueryRecord::new("update price", in_recovery, port);
    Ok(Json(Reply::new("UpdateProduct", product, vec![query])))
}

/// `GET /orders`: orders must be fresh, so this handler opts out of the replica
/// (`use_read_replica = False`).
#[derive(ReadReplicaControl)]
#[read_replica(false)]
pub(crate) struct ListOrders;

pub(crate) async fn list_orders(State(pool): State<RoutedPool>) -> Result<Vec<Order>> {
    let mut conn = pool.get().await?;
    let rows: Vec<(OrderRow, bool, i32)> = orders::table
        .order(orders::id)
        .limit(100)
        .select((ORDER_COLUMNS, pg_is_in_recovery(), inet_server_port()))
        .load(&mut conn)
        .await?;
    let query = QueryRecord::from_rows("list orders", &rows);
    let data = rows.into_iter().map(|(row, _, _)| order(row)).collect();
    Ok(Json(Reply::new("ListOrders", data, vec![query])))
}

/// The body of `POST /orders`.
#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct NewOrder {
    product_id: i64,
    quantity: i32,
}

/// What `POST /orders` answers: the order and the product it is for.
#[derive(Debug, Serialize)]
pub(crate) struct PlacedOrder {
    order: Order,
    product: Product,
}

/// `POST /orders`: a write, then a read of the product on the same connection, which stays on
/// the primary (read-your-writes within the request).
pub(crate) async fn create_order(
    State(pool): State<RoutedPool>,
    Json(new): Json<NewOrder>,
) -> Result<PlacedOrder> {
    let mut conn = pool.get().await?;
    let (row, in_recovery, port) = diesel::insert_into(orders::table)
        .values((
            orders::product_id.eq(new.product_id),
            orders::quantity.eq(new.quantity),
            orders::status.eq(OrderStatus::Pending),
        ))
        .returning((ORDER_COLUMNS, pg_is_in_recovery(), inet_server_port()))
        .get_result::<(OrderRow, bool, i32)>(&mut conn)
        .await?;
    let inserted = QueryRecord::new("insert order", in_recovery, port);
    let (product, in_recovery, port) = products::table
        .find(new.product_id)
        .select((
            Product::as_select(),
            pg_is_in_recovery(),
            inet_server_port(),
        ))
        .first::<(Product, bool, i32)>(&mut conn)
        .await?;
    let read_back = QueryRecord::new("read product back", in_recovery, port);
    let data = PlacedOrder {
        order: order(row),
        product,
    };
    Ok(Json(Reply::new(
        "CreateOrder",
        data,
        vec![inserted, read_back],
    )))
}

/// `DELETE /orders/{id}`: cancels the order; a write, on the primary.
pub(crate) async fn cancel_order(
    State(pool): State<RoutedPool>,
    Path(id): Path<i64>,
) -> Result<Order> {
    let mut conn = pool.get().await?;
    let (row, in_recovery, port) = diesel::update(orders::table.find(id))
        .set(orders::status.eq(OrderStatus::Cancelled))
        .returning((ORDER_COLUMNS, pg_is_in_recovery(), inet_server_port()))
        .get_result::<(OrderRow, bool, i32)>(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| AppError::not_found("order"))?;
    let query = QueryRecord::new("cancel order", in_recovery, port);
    Ok(Json(Reply::new("CancelOrder", order(row), vec![query])))
}

/// `GET /orders/{id}/status`: a function handler that opts out of the replica with the
/// attribute form of the policy.
#[use_read_replica(false)]
pub(crate) async fn order_status(
    State(pool): State<RoutedPool>,
    Path(id): Path<i64>,
) -> Result<&'static str> {
    let mut conn = pool.get().await?;
    let (status, in_recovery, port) = orders::table
        .find(id)
        .select((orders::status, pg_is_in_recovery(), inet_server_port()))
        .first::<(OrderStatus, bool, i32)>(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| AppError::not_found("order"))?;
    let query = QueryRecord::new("order status", in_recovery, port);
    Ok(Json(Reply::new(
        "order_status",
        status.label(),
        vec![query],
    )))
}

/// `GET /reports/sales`: a report that tolerates stale data, explicitly on a replica
/// (`use_read_replica = True`). `POST` on the same route goes to the primary all the same.
#[derive(ReadReplicaControl)]
#[read_replica(true)]
pub(crate) struct SalesReport;

/// What the sales report answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Sales {
    orders: i64,
    revenue_cents: i64,
}

pub(crate) async fn sales_report(State(pool): State<RoutedPool>) -> Result<Sales> {
    report(pool, "SalesReport").await
}

/// `POST /reports/sales`: the same reads as the report, but a `POST`: the middleware sends it to
/// the primary whatever the handler's policy says.
pub(crate) async fn refresh_sales_report(State(pool): State<RoutedPool>) -> Result<Sales> {
    report(pool, "SalesReport (POST)").await
}

async fn report(pool: RoutedPool, handler: &str) -> Result<Sales> {
    let mut conn = pool.get().await?;
    let (count, in_recovery, port) = orders::table
        .filter(orders::status.ne(OrderStatus::Cancelled))
        .select((
            diesel::dsl::count_star(),
            pg_is_in_recovery(),
            inet_server_port(),
        ))
        .get_result::<(i64, bool, i32)>(&mut conn)
        .await?;
    let counted = QueryRecord::new("count orders", in_recovery, port);
    let (revenue, in_recovery, port) = diesel::select((
        diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT coalesce(sum(o.quantity * p.price_cents), 0)::bigint \
             FROM orders o JOIN products p ON p.id = o.product_id WHERE o.status <> 'cancelled')",
        ),
        pg_is_in_recovery(),
        inet_server_port(),
    ))
    .get_result::<(i64, bool, i32)>(&mut conn)
    .await?;
    let summed = QueryRecord::new("sum revenue", in_recovery, port);
    let data = Sales {
        orders: count,
        revenue_cents: revenue,
    };
    Ok(Json(Reply::new(handler, data, vec![counted, summed])))
}
