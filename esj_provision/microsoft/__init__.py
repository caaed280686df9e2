"""Talking to Microsoft: credentials and tokens, the one HTTP policy (token flow, retries, throttling,
pacing), the Graph client and the Exchange client (the only code that knows InvokeCommand)."""
