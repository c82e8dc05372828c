"""OpenAPI descriptions drf-spectacular cannot infer (imported by ``ecpower.api.urls``)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "ecpower.api.framework.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A store's API key, `ecp_<prefix>_<secret>`, made in the admin (shown once).",
        }
