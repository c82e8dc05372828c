"""Background tasks of the commerce app. Tasks take ids and are safe to run twice."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from ecpower.commerce.csv_import import CsvFile, shopify_csv_import
from ecpower.commerce.models import CsvImport, CsvImportStatus, Store
from ecpower.commerce.services import store_delete
from ecpower.commerce.shopify_csv import CsvFileError

logger = logging.getLogger(__name__)


def csv_import_run(csv_import_id: int) -> str:
    """Run one uploaded CSV import. A second run of a finished or running import does nothing."""
    claimed = CsvImport.objects.filter(pk=csv_import_id, status=CsvImportStatus.PENDING).update(
        status=CsvImportStatus.RUNNING, started_at=timezone.now()
    )
    if claimed != 1:
        return "already claimed"
    job = CsvImport.objects.select_related("store").get(pk=csv_import_id)

    def progress(stage: str, done: int, total: int) -> None:
        CsvImport.objects.filter(pk=job.pk).update(stage=stage, progress_done=done, progress_total=total)

    files = {}
    for key in ("customers", "products", "orders"):
        upload = getattr(job, f"{key}_file")
        if upload:
            with upload.open("rb") as handle:
                files[key] = CsvFile(name=upload.name.rsplit("/", 1)[-1], data=handle.read())
    try:
        summary = shopify_csv_import(store=job.store, progress=progress, **files)
    except CsvFileError as exc:
        CsvImport.objects.filter(pk=job.pk).update(
            status=CsvImportStatus.FAILED, error=str(exc), finished_at=timezone.now()
        )
        return "failed"
    except Exception as exc:
        logger.exception("CSV import %s failed", job.pk)
        CsvImport.objects.filter(pk=job.pk).update(
            status=CsvImportStatus.FAILED, error=f"Unexpected error: {exc}", finished_at=timezone.now()
        )
        raise
    CsvImport.objects.filter(pk=job.pk).update(
        status=CsvImportStatus.SUCCEEDED, summary=summary.as_dict(), finished_at=timezone.now()
    )
    return "succeeded"


def csv_import_enqueue(csv_import: CsvImport) -> None:
    """Queue an import once the upload is committed."""
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task("ecpower.commerce.tasks.csv_import_run", csv_import.pk, task_name=f"csv-import-{csv_import.pk}"))


def store_delete_run(store_id: int) -> str:
    """Delete a store whose deletion was requested (``store_deletion_request``). Safe to run twice: a store
    already gone is left alone, and a deletion stopped half-way starts over and finishes."""
    store = Store.objects.being_deleted().filter(pk=store_id).first()
    if store is None:
        return "nothing to delete"
    store_delete(store=store)
    return "deleted"
