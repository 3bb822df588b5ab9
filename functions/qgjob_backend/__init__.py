"""qgjob backend: the code that runs in AWS Lambda (api, dispatcher, reaper)."""

__version__ = "0.1.0"
