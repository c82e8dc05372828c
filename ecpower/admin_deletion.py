"""Deletion pages that count what goes with an object instead of listing every row.

Django's delete confirmation lists each row a deletion cascades to. A segment of a large store has
hundreds of thousands of memberships, join/leave events and kept snapshot members: the page would
load and print every one (on the 5,000-customer demo store, 8,373 rows and 3.8 s for one segment
of 2,727 members). ``CountedDeletionAdmin`` shows the chosen objects and, per kind of row, how many
go with them, counted in the database.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.admin.utils import quote
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models.deletion import get_candidate_relations_to_delete
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.text import capfirst

MAX_DEPTH = 4  # cascades deeper than this are not followed (none of our models nest that deep)


def cascade_querysets(queryset: models.QuerySet, owner_field: str | None = None
                      ) -> dict[type[models.Model], models.QuerySet]:
    """Every model a deletion of ``queryset`` cascades to, with the query of its rows that go (the rows a
    model is reached by along several paths are counted once: the paths are OR-ed).

    ``owner_field``: the rows of a model with this foreign key to the deleted objects' model are the
    ones it names (``store``: every row of a store's data names its store), one condition instead of
    the OR of every path (a store's line items are reached through its orders, customers and products
    too)."""
    edges: dict[type[models.Model], list[tuple[str, type[models.Model]]]] = {}

    def walk(model: type[models.Model], path: tuple[type[models.Model], ...]) -> None:
        for relation in get_candidate_relations_to_delete(model._meta.concrete_model._meta):
            child = relation.related_model._meta.concrete_model
            if relation.on_delete is not models.CASCADE or child in path or len(path) > MAX_DEPTH:
                continue
            pair = (relation.field.name, model._meta.concrete_model)
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
            condition = models.Q()
            for field, parent in edges[model]:
                condition |= models.Q(**{f"{field}__in": rows(parent).values("pk")})
            found[model] = model._base_manager.filter(condition)
        return found[model]

    return {model: rows(model) for model in edges}


def protection_possible(model: type[models.Model]) -> bool:
    """Whether a model that a deletion of ``model`` reaches protects its link (``PROTECT``, ``RESTRICT``):
    then Django's own page, which finds and names the protecting rows, is used instead (none of ours does)."""
    reached = [model._meta.concrete_model, *cascade_querysets(model._base_manager.none())]
    return any(relation.on_delete in (models.PROTECT, models.RESTRICT)
               for reached_model in reached for relation in get_candidate_relations_to_delete(reached_model._meta))


class CountedDeletionAdmin:
    """For a ModelAdmin whose objects own many rows: the delete pages count them instead of listing them.

    Permissions are the admin's own: whoever may delete the chosen objects may delete the rows that
    belong to them (our store-scoped admins give the rows of a store the same writers as the store's
    segments).
    """

    deletion_owner_field: str | None = None  # see cascade_querysets

    def get_deleted_objects(self, objs: Iterable[models.Model], request):
        objs = list(objs)
        model = self.model
        if protection_possible(model):
            return super().get_deleted_objects(objs, request)
        queryset = model._base_manager.filter(pk__in=[obj.pk for obj in objs])
        chosen = [self._deleted_object_line(obj) for obj in objs]
        counts = {model._meta.verbose_name_plural: len(objs)}
        # Confirmed ("post" in the form): Django reads only the permissions and what protects, so the rows
        # are not counted again (a store of a million customers: seconds per table).
        if not request.POST.get("post"):
            for related, rows in cascade_querysets(queryset, self.deletion_owner_field).items():
                number = rows.count()
                if number:
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
