"""The flow UI: a token-guarded twisted.web site over the capture store ([web] listen)."""
