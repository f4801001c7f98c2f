"""The retrieval web page and its JSON API (`evoked serve`)."""

from evoked.serve.app import ServeConfig, create_app, serve

__all__ = ["ServeConfig", "create_app", "serve"]
