use axum::Router;
use axum::routing::{delete, get};
use routing_core::web::StatusService;
use routing_core::{ReadReplicaLayer, RoutedPool};

use crate::handlers::{
    ListOrders, ListProducts, ProductDetail, SalesReport, cancel_order, create_order,
    create_product, list_orders, list_products, order_status, product_detail, refresh_sales_report,
    sales_report, update_product,
};

/// The demo's routes. Each route carries its handler's read-replica policy; the router's default
/// lets the reads of the other routes use a replica and carries causal tokens in a cookie. Every
/// non-read method goes to the primary. `/status` serves the pool's status: JSON, or the table
/// with `Accept: text/plain`.
pub fn app(pool: RoutedPool) -> Router {
    let status = StatusService::new(pool.clone());
    Router::new()
        .route(
            "/products",
            get(list_products)
                .post(create_product)
                .layer(ReadReplicaLayer::for_handler::<ListProducts>()),
        )
        .route(
            "/products/{id}",
            get(product_detail)
                .put(update_product)
                .layer(ReadReplicaLayer::for_handler::<ProductDetail>()),
        )
        .route(
            "/orders",
            get(list_orders)
                .post(create_order)
                .layer(ReadReplicaLayer::for_handler::<ListOrders>()),
        )
        .route("/orders/{id}", delete(cancel_order))
        .route(
            "/orders/{id}/status",
            get(order_status).layer(ReadReplicaLayer::for_handler::<order_status>()),
        )
        .route(
            "/reports/sales",
            get(sales_report)
                .post(refresh_sales_report)
                .layer(ReadReplicaLayer::for_handler::<SalesReport>()),
        )
        // The default for the other routes, and read-your-writes across requests: a response to a
        // request that wrote sets the `read_after` cookie, and the next request's reads see that
        // write (on a caught-up replica, or on the primary).
        .layer(ReadReplicaLayer::allow_replica().causal_cookie("read_after"))
        .route_service("/status", status)
        .with_state(pool)
}
