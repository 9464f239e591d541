"""A user's project with its own bnclaims experiment."""
