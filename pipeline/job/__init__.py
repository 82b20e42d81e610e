"""One experiment's build: the plan, its guard, the runner that executes it, names, locks, resume, retire, tune."""
