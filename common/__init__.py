"""What every process shares: configuration, episode schema, battle worlds, networks, metrics, the CLI."""
