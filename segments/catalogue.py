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
    rows = [
        ("first-time-buyers", gettext_lazy("First-time buyers"), gettext_lazy("Exactly one order so far."), "number_of_orders = 1"),
        ("repeaters", gettext_lazy("Repeat customers"), gettext_lazy("Two or more orders."), "number_of_orders >= 2"),
        ("loyal", gettext_lazy("Loyal customers"), gettext_lazy("Five or more orders."), "number_of_orders >= 5"),
        ("f2-candidates", gettext_lazy("F2 candidates"),
         gettext_lazy("One order, placed in the last 60 days: the moment to win the second order."),
         "number_of_orders = 1 AND last_order_date >= -60d"),
        ("dormant", gettext_lazy("Dormant"), gettext_lazy("Bought before, but not in the last 90 days."),
         "number_of_orders >= 1 AND last_order_date < -90d"),
        ("at-risk", gettext_lazy("At risk"), gettext_lazy("Repeat customers whose last order is 60 to 180 days old."),
         "number_of_orders >= 2 AND last_order_date BETWEEN -180d AND -60d"),
        ("lost-loyal", gettext_lazy("Lost loyal customers"), gettext_lazy("Three or more orders, none in the last 180 days."),
         "number_of_orders >= 3 AND last_order_date < -180d"),
        ("active-30d", gettext_lazy("Active in the last 30 days"), gettext_lazy("Ordered in the last 30 days."),
         "last_order_date >= -30d"),
        ("new-30d", gettext_lazy("New customers (30 days)"), gettext_lazy("First order in the last 30 days."),
         "first_order_date >= -30d"),
        ("high-spenders", gettext_lazy("High spenders"), gettext_lazy("Spent 50,000 or more in total."), "amount_spent >= 50000"),
        ("high-aov", gettext_lazy("High average order"), gettext_lazy("Average order value of 10,000 or more."),
         "average_order_value >= 10000"),
        ("prospects", gettext_lazy("No orders yet"), gettext_lazy("Customers who never ordered."), "number_of_orders = 0"),
        ("first-order-with-code", gettext_lazy("First order with a discount code"),
         gettext_lazy("Acquired with a campaign or coupon code."), "first_order_discount_code IS NOT NULL"),
        ("first-order-utm", gettext_lazy("Acquired through a UTM campaign"), gettext_lazy("The first order carried a UTM campaign."),
         "first_order_utm_campaign IS NOT NULL"),
        ("second-order-within-90d", gettext_lazy("Second order in the last 90 days"),
         gettext_lazy("Became a repeat customer recently."),
         "orders_placed MATCHES (date >= -90d, count >= 1) AND products_purchased MATCHES (order_number = 2, "
         "date >= -90d)"),
        ("email-subscribers", gettext_lazy("Email subscribers"), gettext_lazy("Accept email marketing."),
         "email_subscription_status = 'SUBSCRIBED'"),
        ("sms-subscribers", gettext_lazy("SMS subscribers"), gettext_lazy("Accept SMS marketing."),
         "sms_subscription_status = 'SUBSCRIBED'"),
        ("big-basket", gettext_lazy("Big baskets"), gettext_lazy("At least one order of 20,000 or more."),
         "orders_placed MATCHES (amount >= 20000)"),
        ("frequent-this-year", gettext_lazy("Frequent this year"), gettext_lazy("Three or more orders in the last 12 months."),
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
