"""The client side of sync: pull and verify bundles, answer requests, push reports and changes."""
