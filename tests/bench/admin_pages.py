"""The admin pages a CRM user opens, on the store ``suite.py`` built, timed in a real headless Chromium.

    make bench-admin                              # after make bench, on the store it left
    python tests/bench/admin_pages.py --repeat 3

Starts the web server (``runserver --insecure``, ``DJANGO_DEBUG`` off, one process) on the benchmark
database, logs a superuser in, and opens each page ``--repeat`` times: the store's customers, orders,
segments and their join/leave events, the largest condition segment (its page, members, metrics, tags,
products, attributes), the store's cohorts, RFM and delete page, and the segment builder's live count of
the suite's ``products_purchased`` query (the estimate the builder shows first, then the exact count; both
include the builder's 300 ms pause after a keystroke). A page is timed from the navigation to its
``load`` event; ``server`` is the time to its first byte. Prints a table; writes JSON to
``bench-results/admin_pages.json``. Nothing is written to the store but a superuser, ``bench-admin``, and, on a
store above ``INSIGHTS_KEPT_ABOVE`` customers, its kept cohorts and RFM tables, computed first (timed) as a
worker does after the daily run, so their pages show what a user finds in the morning.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402 - the browser the end-to-end tests drive

USERNAME = "bench-admin"
SERVER_TIME = "(() => { const n = performance.getEntriesByType('navigation')[0]; return n.responseStart - n.requestStart; })()"


def pages(store, segment, customer) -> list[tuple[str, str]]:
    """(label, path) of every page timed, on ``store`` and its largest condition ``segment``."""
    from django.urls import reverse

    on_store = f"?store={store.pk}"
    return [
        ("Customers", reverse("admin:commerce_customer_changelist")),
        ("A customer (most orders)", reverse("admin:commerce_customer_change", args=[customer.pk])),
        ("Orders", reverse("admin:commerce_order_changelist")),
        ("Segments", reverse("admin:segments_conditionsegment_changelist")),
        ("Join/leave events", reverse("admin:segments_membershipevent_changelist")),
        (f"A segment ({segment.member_count:,} members)", reverse("admin:segments_conditionsegment_change",
                                                                 args=[segment.pk])),
        ("Its members", reverse("admin:segments_conditionsegment_members", args=[segment.pk])),
        ("Its metrics", reverse("admin:metrics_segment", args=[segment.pk])),
        ("Its tags", reverse("admin:metrics_tags", args=[segment.pk])),
        ("Its products", reverse("admin:metrics_products", args=[segment.pk])),
        ("Its attributes", reverse("admin:metrics_attributes", args=[segment.pk])),
        ("Cohorts", reverse("admin:metrics_cohorts") + on_store),
        ("RFM", reverse("admin:metrics_rfm") + on_store),
        ("The store's delete page", reverse("admin:commerce_store_delete", args=[store.pk])),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_start(port: int, log: Path) -> subprocess.Popen:
    """The web server as production configures it (debug off, so no query log), over plain HTTP on 127.0.0.1,
    with secrets made up for this run."""
    from cryptography.fernet import Fernet

    env = {**os.environ, "DJANGO_DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(40),
           "ECPOWER_ENCRYPTION_KEYS": Fernet.generate_key().decode(), "ALLOWED_HOSTS": "127.0.0.1",
           "SESSION_COOKIE_SECURE": "0", "CSRF_COOKIE_SECURE": "0"}
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runserver", f"127.0.0.1:{port}", "--noreload", "--insecure"],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            if server.poll() is not None:
                tail = log.read_text(errors="replace").splitlines()[-5:]
                raise SystemExit(f"the web server stopped (exit {server.returncode}):\n" + "\n".join(tail)) from None
            time.sleep(0.1)
    server.kill()
    raise SystemExit(f"the web server did not start in 30 s (its output: {log})")


def run(*, repeat: int, domain: str) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from ecpower.commerce.models import Customer, Store
    from segments.models import Segment, SegmentKind
    from tests.bench.suite import PREVIEW_QUERIES, machine

    store = Store.objects.filter(shopify_domain=domain).first()
    if store is None:
        raise SystemExit(f"no store {domain} in this database: run tests/bench/suite.py first")
    segment = Segment.objects.filter(store=store, kind=SegmentKind.CONDITION).order_by("-member_count").first()
    customer = Customer.objects.filter(store=store).order_by("-orders_count", "id").first()
    password = secrets.token_urlsafe(16)
    user, _ = get_user_model().objects.get_or_create(username=USERNAME)
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()
    customers = Customer.objects.filter(store=store).count()
    kept = kept_reports_computed(store)
    connection.close()

    from playwright.sync_api import sync_playwright

    port = free_port()
    server = server_start(port, Path(tempfile.gettempdir()) / "ecpower-bench-admin-server.log")
    base = f"http://127.0.0.1:{port}"
    rows: list[dict] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="ja-JP")
            page.set_default_timeout(600_000)
            page.goto(f"{base}/admin/login/?next=/admin/")
            page.fill("#id_username", USERNAME)
            page.fill("#id_password", password)
            page.click("input[type=submit]")
            page.wait_for_url(f"{base}/admin/")
            for label, path in pages(store, segment, customer):
                loads, servers, status = [], [], None
                for _ in range(repeat):
                    start = time.perf_counter()
                    response = page.goto(base + path, wait_until="load")
                    loads.append(time.perf_counter() - start)
                    servers.append(page.evaluate(SERVER_TIME) / 1000)
                    status = response.status if response else None
                rows.append(row(label, path, loads, servers, status))
            rows.append(builder_timed(page, base, store, PREVIEW_QUERIES["products"], repeat))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"customers": customers, "store": domain, "segment": segment.slug, "repeat": repeat, "pages": rows,
            "kept_reports": kept, "machine": machine()}


def kept_reports_computed(store) -> dict[str, float]:
    """The store's kept cohorts and RFM, computed here as a worker does after the daily run (a large store's
    pages show them); the seconds each took, printed and returned."""
    from django_q.conf import Conf

    from metrics.insight_reports import insight_reports_refresh
    from metrics.models import InsightReport

    synchronous, Conf.SYNC = Conf.SYNC, True  # the task runs here, not on a worker
    try:
        reports = insight_reports_refresh(store=store)
    finally:
        Conf.SYNC = synchronous
    seconds = {report.kind: InsightReport.objects.get(pk=report.pk).seconds for report in reports}
    for kind, taken in seconds.items():
        print(f"kept {kind} computed in the background: {taken} s", flush=True)
    return seconds


def row(label: str, path: str, loads: list[float], servers: list[float], status: int | None) -> dict:
    found = {"page": label, "path": path, "status": status, "load_median": round(statistics.median(loads), 3),
             "load": [round(x, 3) for x in loads], "server_median": round(statistics.median(servers), 3)}
    flag = "" if status == 200 else f"  HTTP {status}"
    print(f"  {label:<44}{found['load_median']:>8.2f} s  (server {found['server_median']:.2f} s; "
          f"{', '.join(f'{x:.2f}' for x in loads)}){flag}", flush=True)
    return found


def builder_timed(page, base: str, store, query: str, repeat: int) -> dict:
    """The builder's live count of ``query``: seconds from typing it to the first count shown (the estimate
    on a large store) and to the exact count."""
    from django.urls import reverse

    first, exact, shown = [], [], ""
    for _ in range(repeat):
        page.goto(base + reverse("admin:segments_conditionsegment_add"), wait_until="load")
        page.select_option("#id_store", str(store.pk))
        start = time.perf_counter()
        page.fill("#id_query", query)
        page.wait_for_function("document.querySelector('#segment-preview-count strong') !== null")
        first.append(time.perf_counter() - start)
        page.wait_for_function(
            "document.querySelector('#segment-preview-count:not([data-estimated]) strong') !== null")
        exact.append(time.perf_counter() - start)
        shown = page.locator("#segment-preview-count strong").inner_text()
    found = {"page": f"Builder: {query}", "path": reverse("admin:segments_conditionsegment_add"), "status": 200,
             "first_count_median": round(statistics.median(first), 3), "first_count": [round(x, 3) for x in first],
             "exact_count_median": round(statistics.median(exact), 3), "exact_count": [round(x, 3) for x in exact],
             "members": shown}
    print(f"  {'Builder, first count shown':<44}{found['first_count_median']:>8.2f} s  "
          f"({', '.join(f'{x:.2f}' for x in first)})", flush=True)
    print(f"  {'Builder, exact count shown':<44}{found['exact_count_median']:>8.2f} s  "
          f"({', '.join(f'{x:.2f}' for x in exact)}; {shown} members)", flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="times each page is opened (the median is shown)")
    parser.add_argument("--store", default="bench.myshopify.com", help="the shop domain suite.py generated")
    parser.add_argument("--json", default=str(ROOT / "bench-results" / "admin_pages.json"))
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ecpower.settings")
    import django

    django.setup()
    result = run(repeat=args.repeat, domain=args.store)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str, ensure_ascii=False))
    print(f"wrote {out}")
    if any(page["status"] != 200 for page in result["pages"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
