DROP TRIGGER trg_orders_audit;
DROP TABLE order_audit;
