"""Chaos tests: kill -9 of writers and servers, restarts."""
