"""Local stack, demo and deployment helpers for qgjob (not shipped to Lambda)."""
