"""A plain-Python evaluator of rule trees: the specification the compiled SQL is checked against.

It reads the raw orders (not the customer facts) and applies docs/segments.md literally, one
customer at a time, so a wrong fact, a wrong date boundary or a NULL slipping through a NOT in
the SQL shows up as a disagreement.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal

from ecpower.commerce.models import Customer, CustomerTag, LineItem, Order, Product, ProductTag
from segments.models import Membership, Segment
from segments.rules import resolve_date

OPS = {"=": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _num(value):
    return value if isinstance(value, int) else Decimal(str(value))


def compare(actual, op, value) -> bool:
    if actual is None:
        return False
    if op == "between":
        low, high = sorted(_num(v) for v in value)
        return low <= actual <= high
    return OPS[op](actual, _num(value))


class Oracle:
    def __init__(self, store, *, as_of: dt.date, today: dt.date, customer_ids: list[int] | None = None):
        """Loads the store, or only ``customer_ids`` (the benchmark's naive per-customer baseline)."""
        self.store, self.as_of, self.today = store, as_of, today
        self.zone = store.zone
        self.cutoff = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time.min, tzinfo=self.zone)
        only = {} if customer_ids is None else {"customer_id__in": customer_ids}
        self.customers = list(Customer.objects.filter(
            store=store, **({} if customer_ids is None else {"pk__in": customer_ids})))
        self.tags = defaultdict(set)
        for customer_id, name in CustomerTag.objects.filter(store=store, **only).values_list("customer_id", "name"):
            self.tags[customer_id].add(name.lower())
        self.products = {p.pk: p for p in Product.objects.filter(store=store)}
        self.product_tags = defaultdict(set)
        for product_id, name in ProductTag.objects.filter(store=store).values_list("product_id", "name"):
            self.product_tags[product_id].add(name.lower())
        all_counted = [
            o for o in Order.objects.filter(store=store, **only)
            if o.customer_id and o.cancelled_at is None and not o.test
        ]
        all_counted.sort(key=lambda o: (o.created_at, o.pk))
        self.ordinal, seen = {}, defaultdict(int)
        for order in all_counted:
            seen[order.customer_id] += 1
            self.ordinal[order.pk] = seen[order.customer_id]
        self.orders = defaultdict(list)
        for order in all_counted:
            if order.created_at < self.cutoff:
                self.orders[order.customer_id].append(order)
        self.lines = defaultdict(list)
        lines = LineItem.objects.filter(store=store)
        if customer_ids is not None:
            lines = lines.filter(order__customer_id__in=customer_ids)
        for line in lines:
            self.lines[line.order_id].append(line)
        self.segments = {s.slug: s for s in Segment.objects.filter(store=store)}
        self.members = defaultdict(set)
        for slug, customer_id in Membership.objects.filter(store=store, **only).values_list(
                "segment__slug", "customer_id"):
            self.members[slug].add(customer_id)

    def local_date(self, moment: dt.datetime | None) -> dt.date | None:
        return moment.astimezone(self.zone).date() if moment else None

    def in_universe(self, customer: Customer) -> bool:
        if self.as_of >= self.today:
            return True
        return customer.shopify_created_at is None or customer.shopify_created_at < self.cutoff

    def member_ids(self, tree) -> set[int]:
        return {c.pk for c in self.customers if self.in_universe(c) and self.matches(tree, c)}

    # -----------------------------------------------------------------------------------------

    def matches(self, node, c: Customer) -> bool:
        if "and" in node:
            return all(self.matches(child, c) for child in node["and"])
        if "or" in node:
            return any(self.matches(child, c) for child in node["or"])
        if "not" in node:
            return not self.matches(node["not"], c)
        return self.condition(node, c)

    def date_test(self, day: dt.date | None, op: str, value) -> bool:
        if op == "is_null":
            return day is None
        if op == "is_not_null":
            return day is not None
        if day is None:
            return False
        if op == "between":
            low, high = sorted(resolve_date(v, self.as_of) for v in value)
            return low <= day <= high
        return OPS[op](day, resolve_date(value, self.as_of))

    def condition(self, node, c: Customer) -> bool:
        name, op, value = node["field"], node["op"], node.get("value")
        orders = self.orders[c.pk]
        spent = sum((o.total - o.refunded_amount for o in orders), Decimal(0))
        if name == "number_of_orders":
            return compare(len(orders), op, value)
        if name == "amount_spent":
            return compare(spent, op, value)
        if name == "average_order_value":
            aov = (spent / len(orders)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) if orders else None
            if op in ("is_null", "is_not_null"):
                return (aov is None) == (op == "is_null")
            return compare(aov, op, value)
        if name == "first_order_date":
            return self.date_test(self.local_date(orders[0].created_at) if orders else None, op, value)
        if name == "last_order_date":
            return self.date_test(self.local_date(orders[-1].created_at) if orders else None, op, value)
        if name == "customer_added_date":
            return self.date_test(self.local_date(c.shopify_created_at), op, value)
        if name.startswith("first_order_"):
            attribute = {"first_order_discount_code": "discount_code", "first_order_source": "source_name",
                         "first_order_utm_source": "utm_source", "first_order_utm_medium": "utm_medium",
                         "first_order_utm_campaign": "utm_campaign"}[name]
            actual = getattr(orders[0], attribute) if orders else ""
            if op == "is_null":
                return actual == ""
            if op == "is_not_null":
                return actual != ""
            if actual == "":
                return False
            return (actual.lower() == value.lower()) == (op == "=")
        if name == "customer_tags":
            return (value.lower() in self.tags[c.pk]) == (op == "contains")
        if name in ("customer_countries", "customer_regions", "customer_cities"):
            attribute = {"customer_countries": "country_code", "customer_regions": "province_code",
                         "customer_cities": "city"}[name]
            actual = getattr(c, attribute)
            return (actual != "" and actual.lower() == value.lower()) == (op == "contains")
        if name in ("email_subscription_status", "sms_subscription_status"):
            actual = c.email_marketing if name.startswith("email") else c.sms_marketing
            return (actual == value) == (op == "=")
        if name == "products_purchased":
            return self.products_purchased(node["params"], orders) == (op == "matches")
        if name == "orders_placed":
            return self.orders_placed(node["params"], orders) == (op == "matches")
        if name == "in_segment":
            segment = self.segments[value]
            if segment.kind == "condition" and self.as_of < self.today:
                return self.matches(segment.rule, c)
            return c.pk in self.members[value]
        raise AssertionError(name)

    @staticmethod
    def _in(actual: str, param) -> bool:
        values = param["value"] if param["op"] == "in" else [param["value"]]
        return bool(actual) and actual.lower() in {v.lower() for v in values}

    def line_matches(self, line, order, params) -> bool:
        product = self.products.get(line.product_id)
        for name, param in params.items():
            op, value = param["op"], param["value"]
            if name == "id":
                values = value if op == "in" else [value]
                if product is None or product.shopify_id not in values:
                    return False
            elif name == "sku" and not self._in(line.sku, param):
                return False
            elif name == "product_type" and not (
                self._in(line.product_type, param) or (product is not None and self._in(product.product_type, param))
            ):
                return False
            elif name == "vendor" and not (
                self._in(line.vendor, param) or (product is not None and self._in(product.vendor, param))
            ):
                return False
            elif name == "tag":
                values = {v.lower() for v in (value if op == "in" else [value])}
                if line.product_id is None or not (self.product_tags[line.product_id] & values):
                    return False
            elif name == "date" and not self.date_test(self.local_date(order.created_at), op, value):
                return False
            elif name == "order_number" and not compare(self.ordinal[order.pk], op, value):
                return False
        return True

    def products_purchased(self, params, orders) -> bool:
        matching_orders, quantity = set(), 0
        for order in orders:
            for line in self.lines[order.pk]:
                if self.line_matches(line, order, params):
                    matching_orders.add(order.pk)
                    quantity += line.quantity
        aggregates = {k: v for k, v in params.items() if k in ("count", "sum_quantity")}
        if not aggregates:
            return bool(matching_orders)
        actual = {"count": len(matching_orders), "sum_quantity": quantity}
        return all(compare(actual[k], p["op"], p["value"]) for k, p in aggregates.items())

    def orders_placed(self, params, orders) -> bool:
        chosen = []
        for order in orders:
            ok = True
            for name, param in params.items():
                op, value = param["op"], param["value"]
                if name == "date":
                    ok = ok and self.date_test(self.local_date(order.created_at), op, value)
                elif name == "amount":
                    ok = ok and compare(order.total, op, value)
                elif name == "discount_code":
                    ok = ok and self._in(order.discount_code, param)
                elif name == "source":
                    ok = ok and self._in(order.source_name, param)
                elif name == "utm_campaign":
                    ok = ok and self._in(order.utm_campaign, param)
            if ok:
                chosen.append(order)
        aggregates = {k: v for k, v in params.items() if k in ("count", "sum_amount")}
        if not aggregates:
            return bool(chosen)
        actual = {"count": len(chosen), "sum_amount": sum((o.total for o in chosen), Decimal(0))}
        return all(compare(actual[k], p["op"], p["value"]) for k, p in aggregates.items())
