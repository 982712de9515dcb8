"""`fairway tenants|submit|jobs|job|cancel|stats`: the HTTP API for people at a terminal.

Every command is a client of the public HTTP API (docs/http-api.md), never of the internal
services, so it works against `fairway up` on this machine or a gateway anywhere. The
argument parser (`parser`) is imported by `services/cli.py` for every `fairway` command;
httpx and rich are imported only when one of these commands runs. docs/cli.md is the manual.
"""
