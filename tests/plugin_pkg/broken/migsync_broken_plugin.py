"""A plugin whose import fails, the way a plugin with a missing dependency does."""

raise RuntimeError("migsync_broken_plugin is broken on purpose")
