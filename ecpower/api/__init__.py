"""The REST API under /api/v1/ (docs/api.md): shared framework in ``framework``, routes in ``urls``."""
