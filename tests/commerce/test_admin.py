"""The admin as staff use it: lists, a customer's page with facts and orders, both languages, CSV upload."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from ecpower.commerce.models import CsvImport, Customer
from tests.factories import CustomerTagFactory, LineItemFactory, OrderFactory


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("admin", "admin@example.jp", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def customer_with_history(db):
    order = OrderFactory(name="#1001", customer__first_name="花子", customer__last_name="山田")
    LineItemFactory(order=order, title="煎茶 やぶきた - 50g")
    CustomerTagFactory(customer=order.customer, name="LINE連携")
    from ecpower.commerce.services import customer_facts_refresh

    customer_facts_refresh(store=order.store)
    return order.customer


@pytest.mark.parametrize(
    "url_name",
    [
        "admin:commerce_store_changelist",
        "admin:commerce_customer_changelist",
        "admin:commerce_order_changelist",
        "admin:commerce_product_changelist",
        "admin:commerce_csvimport_changelist",
        "admin:commerce_csvimport_add",
    ],
)
def test_admin_lists_render(staff_client, customer_with_history, url_name):
    assert staff_client.get(reverse(url_name)).status_code == 200


def test_customer_page_shows_facts_orders_and_tags(staff_client, customer_with_history):
    page = staff_client.get(reverse("admin:commerce_customer_change", args=[customer_with_history.pk]))
    html = page.content.decode()
    assert "#1001" in html
    assert "LINE連携" in html
    assert "Facts from orders" in html
    # Facts are read-only: the form has no input for them.
    assert 'name="orders_count"' not in html


def test_customer_list_does_not_query_per_row(staff_client, customer_with_history, django_assert_max_num_queries):
    for _ in range(20):
        OrderFactory(customer__store=customer_with_history.store)
    with django_assert_max_num_queries(12):
        staff_client.get(reverse("admin:commerce_customer_changelist"))


def test_staff_switch_the_admin_to_japanese_and_back(staff_client, customer_with_history):
    url = reverse("admin:commerce_customer_changelist")
    assert "Customers" in staff_client.get(url).content.decode()
    staff_client.post(reverse("set_language"), {"language": "ja", "next": url})
    japanese = staff_client.get(url).content.decode()
    assert "顧客" in japanese
    assert "購入金額" in japanese  # our own column names are translated too
    staff_client.post(reverse("set_language"), {"language": "en", "next": url})
    assert "Customers" in staff_client.get(url).content.decode()


def test_csv_upload_in_the_admin_runs_the_import_in_the_background(staff_client, store, shopify_csv_dir, django_capture_on_commit_callbacks):
    upload = SimpleUploadedFile("customers_export.csv", (shopify_csv_dir / "customers_export.csv").read_bytes())
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            reverse("admin:commerce_csvimport_add"), {"store": store.pk, "customers_file": upload}
        )
    assert response.status_code == 302
    job = CsvImport.objects.get()
    assert job.status == "succeeded", job.error
    assert job.summary["customers"]["created"] == 3
    assert Customer.objects.filter(store=store).count() == 3
    page = staff_client.get(reverse("admin:commerce_csvimport_change", args=[job.pk])).content.decode()
    assert '<progress max="100" value="100">' in page


def test_a_broken_upload_fails_with_the_located_error(staff_client, store, django_capture_on_commit_callbacks):
    upload = SimpleUploadedFile("orders_export.csv", b"Name,Email,Created at,Lineitem quantity,Lineitem name,Lineitem price\n#1,a@example.jp,never,1,Tea,100\n")
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(reverse("admin:commerce_csvimport_add"), {"store": store.pk, "orders_file": upload})
    job = CsvImport.objects.get()
    assert job.status == "failed"
    assert "line 2, column 'Created at'" in job.error
    assert not Customer.objects.exists()


def test_running_an_import_twice_does_nothing_the_second_time(store, shopify_csv_dir):
    from ecpower.commerce.tasks import csv_import_run

    job = CsvImport.objects.create(
        store=store, customers_file=SimpleUploadedFile("customers_export.csv", (shopify_csv_dir / "customers_export.csv").read_bytes())
    )
    assert csv_import_run(job.pk) == "succeeded"
    assert csv_import_run(job.pk) == "already claimed"


def test_an_upload_over_the_size_limit_is_refused_before_anything_runs(staff_client, store, settings):
    settings.CSV_MAX_UPLOAD_BYTES = 100
    upload = SimpleUploadedFile("orders_export.csv", b"Name,Email\n" + b"x" * 200)
    response = staff_client.post(reverse("admin:commerce_csvimport_add"), {"store": store.pk, "orders_file": upload})
    assert response.status_code == 200
    assert "the limit is 0.0 MB (ECPOWER_CSV_MAX_UPLOAD_BYTES)" in response.content.decode()
    assert not CsvImport.objects.exists()


def test_an_upload_without_files_is_refused(staff_client, store):
    response = staff_client.post(reverse("admin:commerce_csvimport_add"), {"store": store.pk})
    assert "Choose at least one file." in response.content.decode()
    assert not CsvImport.objects.exists()


def test_the_language_switcher_names_each_language_in_itself(staff_client, customer_with_history):
    html = staff_client.get(reverse("admin:index")).content.decode()
    assert '<option value="ja">日本語</option>' in html
    assert '<option value="en" selected>English</option>' in html
