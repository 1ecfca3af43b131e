"""The application: jobs composed from library stages, the CLI, cluster orchestration."""
