//! The `order_status` PostgreSQL enum.

use std::io::Write;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};

/// SQL types of the schema.
pub mod sql_types {
    /// The `order_status` enum type.
    #[derive(Debug, Clone, Copy, diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
    #[diesel(postgres_type(name = "order_status"))]
    pub struct OrderStatus;
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::OrderStatus)]
pub enum OrderStatus {
    /// Placed, not paid.
    Pending,
    /// Paid.
    Paid,
    /// On its way.
    Shipped,
    /// Called off.
    Cancelled,
}

impl OrderStatus {
    /// The enum label in PostgreSQL.
    pub fn label(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

impl ToSql<sql_types::OrderStatus, Pg> for OrderStatus {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(self.label().as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<sql_types::OrderStatus, Pg> for OrderStatus {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        match bytes.as_bytes() {
            b"pending" => Ok(OrderStatus::Pending),
            b"paid" => Ok(OrderStatus::Paid),
            b"shipped" => Ok(OrderStatus::Shipped),
            b"cancelled" => Ok(OrderStatus::Cancelled),
            other => Err(format!(
                "unknown order_status label {:?}",
                String::from_utf8_lossy(other)
            )
            .into()),
        }
    }
}
