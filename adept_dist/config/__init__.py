"""The run's configuration: the options (defaults < file < flags), their resolution into one complete config, and a run folder's record of it (config.json, resume)."""
