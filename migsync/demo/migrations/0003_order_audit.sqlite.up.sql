-- SQLite only: a trigger body has semicolons of its own.
CREATE TABLE order_audit (order_id INTEGER, action TEXT, at TEXT);
CREATE TRIGGER trg_orders_audit AFTER INSERT ON orders
BEGIN
    INSERT INTO order_audit (order_id, action, at) VALUES (new.id, 'insert', datetime('now'));
END;
