"""qgjob: submit AppWright test jobs, follow them, and run device agents."""

__version__ = "0.1.0"
