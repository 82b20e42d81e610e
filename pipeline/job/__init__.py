"""job: one experiment's build."""
