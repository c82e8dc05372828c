"""The API's one error format: ``{"error": {"code", "message", "details"}}``.

Validation errors list each field by its path (``rule.and[0].value``); query-language errors
carry line and column. Kept apart from ``framework`` because DRF imports the authentication
classes while ``rest_framework.views`` itself is loading.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from django.utils.translation import gettext as _
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from segments.rules import InvalidRule

ERROR_CODES = {400: "invalid", 401: "not_authenticated", 403: "permission_denied", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 415: "unsupported_media_type", 429: "throttled"}


def _field_details(detail, path: str = "") -> list[dict]:
    """DRF's nested validation errors as a flat list of {"field": "a.b[0]", "message": ...}."""
    if isinstance(detail, dict):
        out = []
        for name, value in detail.items():
            field = name if name != "non_field_errors" else ""
            out += _field_details(value, f"{path}.{field}" if path and field else field or path)
        return out
    if isinstance(detail, list):
        if all(isinstance(item, str) for item in detail):
            return [{"field": path, "message": str(item)} for item in detail]
        out = []
        for index, item in enumerate(detail):
            out += _field_details(item, f"{path}[{index}]")
        return out
    return [{"field": path, "message": str(detail)}]


def error_response(status: int, code: str, message: str, details=None, headers=None) -> Response:
    return Response({"error": {"code": code, "message": message, "details": details or []}}, status=status,
                    headers=headers)


def exception_handler(exc, context):
    """Every error as ``{"error": {"code", "message", "details"}}``."""
    if isinstance(exc, InvalidRule):
        query_problem = any(p.line or p.path not in ("slug", "holdout_percent") for p in exc.problems)
        return error_response(400, "invalid_query" if query_problem else "invalid", str(exc),
                              [{"field": p.path, "message": p.message, "line": p.line, "column": p.column}
                               for p in exc.problems])
    if isinstance(exc, OverflowError):  # a number too large for the database (SQLite refuses it early)
        return error_response(400, "invalid", _("A number in the request is out of range."))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a bug: let Django log it and answer 500
    if isinstance(exc, exceptions.ValidationError):
        details = _field_details(exc.detail)
        message = _("The request is not valid.")
    else:
        details = []
        message = str(exc.detail) if hasattr(exc, "detail") else str(exc)
    code = ERROR_CODES.get(response.status_code, getattr(exc, "default_code", "error"))
    response.data = {"error": {"code": code, "message": message, "details": details}}
    return response
