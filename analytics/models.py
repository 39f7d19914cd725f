"""analytics arrives with its issue; the app exists so migrations and imports have a home."""
