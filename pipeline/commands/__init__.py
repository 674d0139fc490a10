"""The commands people run outside the DVC graph: caption photos, search them, serve the web page, baselines."""
