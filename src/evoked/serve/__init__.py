"""The retrieval web page and its JSON API (`evoked serve`)."""

from evoked import lazy_exports

# starlette loads when a name is first used, not with the package.
__getattr__, __all__ = lazy_exports(__name__, {"evoked.serve.app": ("ServeConfig", "create_app", "serve")})
