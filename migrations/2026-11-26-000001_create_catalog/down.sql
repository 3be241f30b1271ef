DROP TABLE orders;
DROP TABLE products;
DROP TYPE order_status;
