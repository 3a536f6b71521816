"""Transports between server and clients (HTTP polling, file drop, in-memory).

They arrive with the server issue; the hook they register through,
``migsync_register_transports``, is already part of the plugin contract.
"""
