"""The migration engine: files to migrations, the ledger, the processor, the backend contract,
and the plugin machinery that finds backends, transports, sinks and formats."""
