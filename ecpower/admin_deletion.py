"""Deletion pages that count what goes with an object instead of listing every row.

Django's delete confirmation lists each row a deletion cascades to. A segment of a large store has
hundreds of thousands of memberships, join/leave events and kept snapshot members: the page would
load and print every one (on the 5,000-customer demo store, 8,373 rows and 3.8 s for one segment
of 2,727 members). ``CountedDeletionAdmin`` shows the chosen objects and, per kind of row, how many
go with them, counted in the database.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable

from django.contrib.admin.utils import quote
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models.deletion import get_candidate_relations_to_delete
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.text import capfirst
from django.utils.translation import gettext

MAX_DEPTH = 4  # cascades deeper than this are not followed (none of our models nest that deep)


def cascades(on_delete) -> bool:
    """``models.CASCADE``, or a cascade of our own that says how it finds its rows (``narrow``, e.g.
    ``segments.models.CASCADE_THROUGH_SEGMENTS``)."""
    return on_delete is models.CASCADE or hasattr(on_delete, "narrow")


def cascade_querysets(queryset: models.QuerySet, owner_field: str | None = None
                      ) -> dict[type[models.Model], models.QuerySet]:
    """Every model a deletion of ``queryset`` cascades to, with the query of its rows that go (the rows a
    model is reached by along several paths are counted once: the paths are OR-ed).

    ``owner_field``: the rows of a model with this foreign key to the deleted objects' model are the
    ones it names (``store``: every row of a store's data names its store), one condition instead of
    the OR of every path (a store's line items are reached through its orders, customers and products
    too)."""
    edges: dict[type[models.Model], list[tuple[models.Field, type[models.Model]]]] = {}

    def walk(model: type[models.Model], path: tuple[type[models.Model], ...]) -> None:
        for relation in get_candidate_relations_to_delete(model._meta.concrete_model._meta):
            child = relation.related_model._meta.concrete_model
            if not cascades(relation.on_delete) or child in path or len(path) > MAX_DEPTH:
                continue
            pair = (relation.field, model._meta.concrete_model)
            if pair not in edges.setdefault(child, []):
                edges[child].append(pair)
            walk(child, (*path, child))

    root = queryset.model._meta.concrete_model
    walk(root, (root,))
    found: dict[type[models.Model], models.QuerySet] = {root: queryset}

    def owned(model: type[models.Model]) -> bool:
        try:
            field = model._meta.get_field(owner_field) if owner_field else None
        except FieldDoesNotExist:
            return False
        return field is not None and field.many_to_one and field.related_model._meta.concrete_model is root

    def rows(model: type[models.Model]) -> models.QuerySet:
        if model not in found and owned(model):
            found[model] = model._base_manager.filter(**{f"{owner_field}__in": queryset.values("pk")})
        if model not in found:
            paths = []
            for field, parent in edges[model]:
                linked = model._base_manager.filter(**{f"{field.name}__in": rows(parent).values("pk")})
                narrow = getattr(field.remote_field.on_delete, "narrow", None)  # a cascade with its own lookup
                paths.append(narrow(linked, field) if narrow else linked)
            found[model] = functools.reduce(operator.or_, paths)
        return found[model]

    return {model: rows(model) for model in edges}


def protection_possible(reached: Iterable[type[models.Model]]) -> bool:
    """Whether one of the models a deletion reaches (the deleted objects' model and ``cascade_querysets``'
    keys) has a model protecting its link to it (``PROTECT``, ``RESTRICT``): then Django's own page, which
    finds and names the protecting rows, is used instead (none of ours does)."""
    return any(relation.on_delete in (models.PROTECT, models.RESTRICT)
               for model in reached for relation in get_candidate_relations_to_delete(model._meta.concrete_model._meta))


class CountedDeletionAdmin:
    """For a ModelAdmin whose objects own many rows: the delete pages count them instead of listing them.

    Permissions are the admin's own: whoever may delete the chosen objects may delete the rows that
    belong to them (our store-scoped admins give the rows of a store the same writers as the store's
    segments).
    """

    deletion_owner_field: str | None = None  # see cascade_querysets
    # Models ("app_label.Model") whose rows the page names without counting: tables of a store that grow to
    # tens of millions of rows, each a count of seconds at a million customers.
    deletion_uncounted: tuple[str, ...] = ()

    def get_deleted_objects(self, objs: Iterable[models.Model], request):
        objs = list(objs)
        model = self.model
        queryset = model._base_manager.filter(pk__in=[obj.pk for obj in objs])
        reached = cascade_querysets(queryset, self.deletion_owner_field)
        if protection_possible([model, *reached]):
            return super().get_deleted_objects(objs, request)
        chosen = [self._deleted_object_line(obj) for obj in objs]
        counts = {model._meta.verbose_name_plural: len(objs)}
        # Confirmed ("post" in the form): Django reads only the permissions and what protects, so the rows
        # are not counted again (a store of a million customers: seconds per table).
        if not request.POST.get("post"):
            for related, rows in reached.items():
                if related._meta.label in self.deletion_uncounted:
                    counts[related._meta.verbose_name_plural] = gettext("all of them (not counted)")
                elif number := rows.count():
                    counts[related._meta.verbose_name_plural] = number
        perms_needed = set()
        if not all(self.has_delete_permission(request, obj) for obj in objs):
            perms_needed.add(model._meta.verbose_name)
        return chosen, counts, perms_needed, []

    def _deleted_object_line(self, obj: models.Model) -> str:
        opts = obj._meta
        try:
            url = reverse(f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change", args=[quote(obj.pk)])
        except NoReverseMatch:
            return f"{capfirst(opts.verbose_name)}: {obj}"
        return format_html('{}: <a href="{}">{}</a>', capfirst(opts.verbose_name), url, obj)
