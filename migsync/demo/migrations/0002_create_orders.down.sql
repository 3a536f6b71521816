DROP INDEX idx_orders_customer;
DROP TABLE orders;
