"""Addons: the hook chain that runs them, and the built-in ones (access log, CA page)."""
