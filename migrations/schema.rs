//! Diesel table definitions matching the migrations.

diesel::table! {
    /// Products on sale.
    products (id) {
        /// Key.
        id -> BigInt,
        /// Display name.
        name -> Text,
        /// Price in cents.
        price_cents -> BigInt,
        /// When the row was inserted.
        created_at -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use crate::sql_types::OrderStatus;

    /// Orders of products.
    orders (id) {
        /// Key.
        id -> BigInt,
        /// The product ordered.
        product_id -> BigInt,
        /// How many.
        quantity -> Integer,
        /// Where the order stands.
        status -> OrderStatus,
        /// When the row was inserted.
        created_at -> Timestamptz,
    }
}

diesel::joinable!(orders -> products (product_id));
diesel::allow_tables_to_appear_in_same_query!(orders, products);
