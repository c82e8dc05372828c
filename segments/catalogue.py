"""Ready-made segments after ECPower's catalogue, added to a store in one action.

Each template is a query in the query language; the per-product-type templates are generated
from the store's own catalogue ("fans of 緑茶", ...), as ECPower generates them per product.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models.functions import Trim
from django.utils.text import slugify
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ecpower.commerce.models import Product, ProductTag, Store


@dataclass(frozen=True)
class Template:
    slug: str
    name: str
    description: str
    query: str


def catalogue() -> list[Template]:
    t = gettext_lazy
    rows = [
        ("first-time-buyers", t("First-time buyers"), t("Exactly one order so far."), "number_of_orders = 1"),
        ("repeaters", t("Repeat customers"), t("Two or more orders."), "number_of_orders >= 2"),
        ("loyal", t("Loyal customers"), t("Five or more orders."), "number_of_orders >= 5"),
        ("f2-candidates", t("F2 candidates"),
         t("One order, placed in the last 60 days: the moment to win the second order."),
         "number_of_orders = 1 AND last_order_date >= -60d"),
        ("dormant", t("Dormant"), t("Bought before, but not in the last 90 days."),
         "number_of_orders >= 1 AND last_order_date < -90d"),
        ("at-risk", t("At risk"), t("Repeat customers whose last order is 60 to 180 days old."),
         "number_of_orders >= 2 AND last_order_date BETWEEN -180d AND -60d"),
        ("lost-loyal", t("Lost loyal customers"), t("Three or more orders, none in the last 180 days."),
         "number_of_orders >= 3 AND last_order_date < -180d"),
        ("active-30d", t("Active in the last 30 days"), t("Ordered in the last 30 days."),
         "last_order_date >= -30d"),
        ("new-30d", t("New customers (30 days)"), t("First order in the last 30 days."),
         "first_order_date >= -30d"),
        ("high-spenders", t("High spenders"), t("Spent 50,000 or more in total."), "amount_spent >= 50000"),
        ("high-aov", t("High average order"), t("Average order value of 10,000 or more."),
         "average_order_value >= 10000"),
        ("prospects", t("No orders yet"), t("Customers who never ordered."), "number_of_orders = 0"),
        ("first-order-with-code", t("First order with a discount code"),
         t("Acquired with a campaign or coupon code."), "first_order_discount_code IS NOT NULL"),
        ("first-order-utm", t("Acquired through a UTM campaign"), t("The first order carried a UTM campaign."),
         "first_order_utm_campaign IS NOT NULL"),
        ("second-order-within-90d", t("Second order in the last 90 days"),
         t("Became a repeat customer recently."),
         "orders_placed MATCHES (date >= -90d, count >= 1) AND products_purchased MATCHES (order_number = 2, "
         "date >= -90d)"),
        ("email-subscribers", t("Email subscribers"), t("Accept email marketing."),
         "email_subscription_status = 'SUBSCRIBED'"),
        ("sms-subscribers", t("SMS subscribers"), t("Accept SMS marketing."),
         "sms_subscription_status = 'SUBSCRIBED'"),
        ("big-basket", t("Big baskets"), t("At least one order of 20,000 or more."),
         "orders_placed MATCHES (amount >= 20000)"),
        ("frequent-this-year", t("Frequent this year"), t("Three or more orders in the last 12 months."),
         "orders_placed MATCHES (date >= -12m, count >= 3)"),
    ]
    return [Template(slug, str(name), str(description), query) for slug, name, description, query in rows]


def store_templates(store: Store) -> list[Template]:
    """The fixed catalogue plus one template per product type and per colour tag of the store."""
    templates = catalogue()
    product_types = (
        Product.objects.filter(store=store).annotate(t=Trim("product_type")).exclude(t="")
        .values_list("t", flat=True).distinct().order_by("t")
    )
    for index, product_type in enumerate(product_types, 1):
        slug = slugify(product_type) or f"type-{index}"
        templates.append(Template(
            f"fans-{slug}", _("Fans of %(type)s") % {"type": product_type},
            _("Bought %(type)s in two or more orders.") % {"type": product_type},
            f"products_purchased MATCHES (product_type = '{_quote(product_type)}', count >= 2)",
        ))
    colours = ProductTag.objects.filter(store=store, name__istartswith="color:").values_list("name", flat=True)
    for tag in sorted(set(colours)):
        colour = tag.split(":", 1)[1]
        templates.append(Template(
            f"{slugify(colour)}-item-lovers", _("%(colour)s item lovers") % {"colour": colour.capitalize()},
            _("Bought items tagged %(tag)s in two or more orders.") % {"tag": tag},
            f"products_purchased MATCHES (tag = '{_quote(tag)}', count >= 2)",
        ))
    return templates


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
