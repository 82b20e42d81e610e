"""The settings: frozen dataclasses and their rules (schema), YAML presets and --set overrides (loading)."""
