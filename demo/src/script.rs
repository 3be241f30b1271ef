//! The scripted workload: one request per usage pattern.

use std::net::SocketAddr;

use axum::http::Method;
use routing_cluster::LocalCluster;
use routing_demo::QueryRecord;
use serde_json::{Value, json};

use crate::BoxError;
use crate::client::send;

/// One request of the workload and where its queries ran.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) handler: String,
    pub(crate) queries: Vec<QueryRecord>,
}

struct Client<'a> {
    addr: SocketAddr,
    rows: Vec<Row>,
    cluster: &'a LocalCluster,
}

impl Client<'_> {
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, BoxError> {
        let (status, reply) = send(self.addr, method.clone(), path, body).await?;
        if !status.is_success() {
            return Err(format!("{method} {path} answered {status}: {reply}").into());
        }
        let handler = reply["handler"].as_str().unwrap_or("?").to_owned();
        let queries: Vec<QueryRecord> = serde_json::from_value(reply["queries"].clone())?;
        self.rows.push(Row {
            method,
            path: path.to_owned(),
            handler,
            queries,
        });
        Ok(reply["data"].clone())
    }

    /// After writes, lets the replicas catch up so that the reads that follow see them.
    async fn replicate(&self) -> Result<(), BoxError> {
        Ok(self.cluster.wait_for_replicas().await?)
    }
}

/// Runs the workload against the app at `addr`.
pub(crate) async fn run(addr: SocketAddr, cluster: &LocalCluster) -> Result<Vec<Row>, BoxError> {
    let mut client = Client {
        addr,
        rows: Vec::new(),
        cluster,
    };
    let keyboard = client
        .call(
            Method::POST,
            "/products",
            Some(json!({"name": "keyboard", "price_cents": 4900})),
        )
        .await?;
    client
        .call(
            Method::POST,
            "/products",
            Some(json!({"name": "mouse", "price_cents": 1900})),
        )
        .await?;
    let id = keyboard["id"].as_i64().ok_or("the new product has no id")?;
    client.replicate().await?;

    client.call(Method::GET, "/products", None).await?;
    client.call(Method::GET, "/products", None).await?;
    client
        .call(Method::GET, &format!("/products/{id}"), None)
        .await?;
    client
        .call(Method::GET, &format!("/products/{id}?fresh=1"), None)
        .await?;

    let placed = client
        .call(
            Method::POST,
            "/orders",
            Some(json!({"product_id": id, "quantity": 2})),
        )
        .await?;
    let order = placed["order"]["id"]
        .as_i64()
        .ok_or("the new order has no id")?;
    client.replicate().await?;
    client.call(Method::GET, "/orders", None).await?;
    client
        .call(Method::GET, &format!("/orders/{order}/status"), None)
        .await?;
    client.call(Method::GET, "/reports/sales", None).await?;
    client.call(Method::POST, "/reports/sales", None).await?;
    client
        .call(
            Method::PUT,
            &format!("/products/{id}"),
            Some(json!({"price_cents": 4500})),
        )
        .await?;
    client
        .call(Method::DELETE, &format!("/orders/{order}"), None)
        .await?;
    Ok(client.rows)
}
