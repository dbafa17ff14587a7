"""Presets, the one feature schema, the strict config loader and the CLI conventions (no TF)."""
