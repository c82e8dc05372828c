"""The emulator's GraphQL Admin API: a subset of Shopify's schema, executed with graphql-core.

Queries are parsed and validated against the schema below, so a misspelt field fails here as it
would at Shopify. Costs follow Shopify's model (objects 1, connections 2 + first × child,
mutations 10), bulk queries are flattened to JSONL with ``__parentId`` and bulk mutations answer
one line per input line with ``__lineNumber``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import time

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    build_schema,
    get_named_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
    parse,
    validate,
)
from graphql.execution import execute
from graphql.utilities import value_from_ast_untyped

from integrations.shopify.emulator.state import BulkOperation, Shop, World, iso, now

SDL = """
scalar DateTime
scalar Decimal
scalar UnsignedInt64
scalar URL

interface Node { id: ID! }

type PageInfo { hasNextPage: Boolean! hasPreviousPage: Boolean! startCursor: String endCursor: String }
type MoneyV2 { amount: Decimal! currencyCode: String! }
type MoneyBag { shopMoney: MoneyV2! presentmentMoney: MoneyV2! }
type UserError { field: [String!] message: String! }

type Shop implements Node { id: ID! name: String! myshopifyDomain: String! ianaTimezone: String! currencyCode: String! }

type CustomerEmailAddress { emailAddress: String marketingState: String! }
type CustomerPhoneNumber { phoneNumber: String! marketingState: String! }
type MailingAddress { city: String province: String provinceCode: String countryCodeV2: String zip: String }

type Customer implements Node {
  id: ID! legacyResourceId: UnsignedInt64! firstName: String lastName: String displayName: String!
  email: String phone: String note: String state: String! tags: [String!]!
  defaultEmailAddress: CustomerEmailAddress defaultPhoneNumber: CustomerPhoneNumber
  defaultAddress: MailingAddress numberOfOrders: UnsignedInt64! amountSpent: MoneyV2!
  createdAt: DateTime! updatedAt: DateTime!
  orders(first: Int, after: String): OrderConnection!
}
type CustomerEdge { cursor: String! node: Customer! }
type CustomerConnection { nodes: [Customer!]! edges: [CustomerEdge!]! pageInfo: PageInfo! }

type UTMParameters { campaign: String content: String medium: String source: String term: String }
type CustomerVisit { landingPage: URL referrerUrl: URL source: String utmParameters: UTMParameters }
type CustomerJourneySummary { ready: Boolean! firstVisit: CustomerVisit }

type ProductVariant implements Node { id: ID! sku: String title: String! price: Decimal! position: Int! }
type ProductVariantEdge { cursor: String! node: ProductVariant! }
type ProductVariantConnection { nodes: [ProductVariant!]! edges: [ProductVariantEdge!]! pageInfo: PageInfo! }
type TaxonomyCategory { fullName: String! }
type Product implements Node {
  id: ID! handle: String! title: String! productType: String! vendor: String! tags: [String!]!
  status: String! category: TaxonomyCategory createdAt: DateTime! updatedAt: DateTime!
  variants(first: Int, after: String): ProductVariantConnection!
}
type ProductEdge { cursor: String! node: Product! }
type ProductConnection { nodes: [Product!]! edges: [ProductEdge!]! pageInfo: PageInfo! }

type LineItem implements Node {
  id: ID! title: String! name: String! quantity: Int! sku: String vendor: String
  originalUnitPriceSet: MoneyBag! totalDiscountSet: MoneyBag! product: Product variant: ProductVariant
}
type LineItemEdge { cursor: String! node: LineItem! }
type LineItemConnection { nodes: [LineItem!]! edges: [LineItemEdge!]! pageInfo: PageInfo! }

type Order implements Node {
  id: ID! legacyResourceId: UnsignedInt64! name: String! email: String createdAt: DateTime!
  processedAt: DateTime! updatedAt: DateTime! cancelledAt: DateTime test: Boolean! sourceName: String
  discountCodes: [String!]! tags: [String!]! currencyCode: String!
  displayFinancialStatus: String displayFulfillmentStatus: String!
  subtotalPriceSet: MoneyBag! totalDiscountsSet: MoneyBag! totalShippingPriceSet: MoneyBag!
  totalTaxSet: MoneyBag! totalPriceSet: MoneyBag! totalRefundedSet: MoneyBag!
  customer: Customer customerJourneySummary: CustomerJourneySummary
  lineItems(first: Int, after: String): LineItemConnection!
}
type OrderEdge { cursor: String! node: Order! }
type OrderConnection { nodes: [Order!]! edges: [OrderEdge!]! pageInfo: PageInfo! }

type BulkOperation implements Node {
  id: ID! status: String! type: String! errorCode: String createdAt: DateTime! completedAt: DateTime
  objectCount: UnsignedInt64! rootObjectCount: UnsignedInt64! fileSize: UnsignedInt64 url: URL
  partialDataUrl: URL query: String!
}

type Segment implements Node { id: ID! name: String! query: String! creationDate: DateTime! lastEditDate: DateTime! }
type SegmentEdge { cursor: String! node: Segment! }
type SegmentConnection { nodes: [Segment!]! edges: [SegmentEdge!]! pageInfo: PageInfo! }

enum CustomerSortKeys { CREATED_AT ID UPDATED_AT NAME RELEVANCE LOCATION }
enum OrderSortKeys { CREATED_AT ID UPDATED_AT PROCESSED_AT }
enum ProductSortKeys { CREATED_AT ID UPDATED_AT TITLE }
enum BulkOperationType { QUERY MUTATION }
enum StagedUploadTargetGenerateUploadResource { BULK_MUTATION_VARIABLES }
enum StagedUploadHttpMethodType { POST PUT }

type Query {
  shop: Shop!
  node(id: ID!): Node
  customer(id: ID!): Customer
  order(id: ID!): Order
  customers(first: Int, after: String, query: String, sortKey: CustomerSortKeys, reverse: Boolean): CustomerConnection!
  orders(first: Int, after: String, query: String, sortKey: OrderSortKeys, reverse: Boolean): OrderConnection!
  products(first: Int, after: String, query: String, sortKey: ProductSortKeys, reverse: Boolean): ProductConnection!
  segments(first: Int, after: String): SegmentConnection!
  currentBulkOperation(type: BulkOperationType): BulkOperation
}

type TagsAddPayload { node: Node userErrors: [UserError!]! }
type TagsRemovePayload { node: Node userErrors: [UserError!]! }
type BulkOperationRunQueryPayload { bulkOperation: BulkOperation userErrors: [UserError!]! }
type BulkOperationRunMutationPayload { bulkOperation: BulkOperation userErrors: [UserError!]! }
input StagedUploadInput {
  resource: StagedUploadTargetGenerateUploadResource! filename: String! mimeType: String!
  httpMethod: StagedUploadHttpMethodType fileSize: UnsignedInt64
}
type StagedUploadParameter { name: String! value: String! }
type StagedMediaUploadTarget { url: URL resourceUrl: URL parameters: [StagedUploadParameter!]! }
type StagedUploadsCreatePayload { stagedTargets: [StagedMediaUploadTarget!] userErrors: [UserError!]! }
type SegmentCreatePayload { segment: Segment userErrors: [UserError!]! }

type Mutation {
  tagsAdd(id: ID!, tags: [String!]!): TagsAddPayload
  tagsRemove(id: ID!, tags: [String!]!): TagsRemovePayload
  bulkOperationRunQuery(query: String!, groupObjects: Boolean): BulkOperationRunQueryPayload
  bulkOperationRunMutation(mutation: String!, stagedUploadPath: String!, clientIdentifier: String): BulkOperationRunMutationPayload
  stagedUploadsCreate(input: [StagedUploadInput!]!): StagedUploadsCreatePayload
  segmentCreate(name: String!, query: String!): SegmentCreatePayload
}
"""

SCHEMA = build_schema(SDL)
SCHEMA.get_type("Node").resolve_type = lambda obj, _info, _type: obj.typename
MAX_SINGLE_QUERY_COST = 1000
MUTATION_COST = 10
MAX_PAGE = 250


class Context:
    def __init__(self, world: World, shop: Shop, base_url: str, *, bulk: bool = False):
        self.world = world
        self.shop = shop
        self.base_url = base_url
        self.bulk = bulk


def gid(kind: str, value) -> str:
    return f"gid://shopify/{kind}/{value}"


def parse_gid(value: str, kind: str | None = None) -> int | None:
    match = re.fullmatch(r"gid://shopify/(\w+)/(\d+)", value or "")
    if not match or (kind and match.group(1) != kind):
        return None
    return int(match.group(2))


def money(amount, currency: str) -> dict:
    value = {"amount": str(amount), "currencyCode": currency}
    return {"shopMoney": value, "presentmentMoney": value}


# --- connections -------------------------------------------------------------------------------


def connection(info, items: list, first: int | None, after: str | None, key) -> dict:
    context: Context = info.context
    start = 0
    if after:
        try:
            start = int(json.loads(base64.b64decode(after))["offset"]) + 1
        except (ValueError, KeyError, TypeError):
            raise GraphQLError("Invalid cursor.") from None
    if context.bulk:
        page = items[start:]
    else:
        if first is None:
            raise GraphQLError("you must provide one of first or last")
        if first > MAX_PAGE:
            raise GraphQLError(f"The value of first must be at most {MAX_PAGE}")
        page = items[start : start + first]

    def cursor(offset: int) -> str:
        return base64.b64encode(json.dumps({"offset": offset, "last_id": key(items[offset])}).encode()).decode()

    edges = [{"cursor": cursor(start + i), "node": node} for i, node in enumerate(page)]
    return {
        "nodes": page,
        "edges": edges,
        "pageInfo": {
            "hasNextPage": start + len(page) < len(items),
            "hasPreviousPage": start > 0,
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
    }


SEARCH_TERM = re.compile(r"""(-?)(\w+):(<=|>=|<|>)?('[^']*'|"[^"]*"|\S+)""")


def search_filter(query: str | None):
    """A subset of Shopify's search syntax: field:value, field:>value, quoted values, implicit AND."""
    if not query:
        return lambda record: True
    terms = []
    for negate, name, op, raw in SEARCH_TERM.findall(query):
        value = raw.strip("'\"")
        terms.append((bool(negate), name, op or "=", value))

    def compare(have, op, want) -> bool:
        if isinstance(have, dt.datetime):
            want_dt = dt.datetime.fromisoformat(want.replace("Z", "+00:00"))
            if want_dt.tzinfo is None:
                want_dt = want_dt.replace(tzinfo=dt.UTC)
            have, want = have, want_dt
        elif isinstance(have, int):
            want = int(want)
        else:
            have, want = str(have or "").lower(), want.lower()
        return {"=": have == want, ">": have > want, "<": have < want, ">=": have >= want, "<=": have <= want}[op]

    def matches(record: dict) -> bool:
        for negate, name, op, value in terms:
            if name == "tag":
                hit = value.lower() in {t.lower() for t in record.get("tags", [])}
            elif name in record:
                hit = compare(record[name], op, value)
            else:
                raise GraphQLError(f"Unsupported search field in the emulator: {name}")
            if hit == negate:
                return False
        return True

    return matches


def sorted_records(records, sort_key: str | None, reverse: bool | None):
    key = {
        "UPDATED_AT": lambda r: (r["updated_at"], r["id"]),
        "CREATED_AT": lambda r: (r["created_at"], r["id"]),
        "PROCESSED_AT": lambda r: (r.get("processed_at") or r["created_at"], r["id"]),
        "TITLE": lambda r: (r.get("title", ""), r["id"]),
        "NAME": lambda r: (r.get("last_name", ""), r.get("first_name", ""), r["id"]),
    }.get(sort_key or "ID", lambda r: r["id"])
    return sorted(records, key=key, reverse=bool(reverse))


# --- nodes ---------------------------------------------------------------------------------------


class CustomerNode:
    typename = "Customer"

    def __init__(self, shop: Shop, record: dict):
        self._shop, self._r = shop, record
        self.id = gid("Customer", record["id"])
        self.legacyResourceId = str(record["id"])
        self.firstName = record["first_name"] or None
        self.lastName = record["last_name"] or None
        self.displayName = f"{record['first_name']} {record['last_name']}".strip() or record["email"] or "-"
        self.email = record["email"] or None
        self.phone = record["phone"] or None
        self.note = record["note"] or None
        self.state = record["state"]
        self.tags = sorted(record["tags"], key=str.lower)
        self.createdAt = iso(record["created_at"])
        self.updatedAt = iso(record["updated_at"])
        self.defaultEmailAddress = (
            {"emailAddress": record["email"], "marketingState": record["email_marketing"]} if record["email"] else None
        )
        self.defaultPhoneNumber = (
            {"phoneNumber": record["phone"], "marketingState": record["sms_marketing"]} if record["phone"] else None
        )
        self.defaultAddress = (
            {"city": record["city"] or None, "province": None, "provinceCode": record["province_code"] or None,
             "countryCodeV2": record["country_code"] or None, "zip": record["zip"] or None}
            if record["country_code"] or record["city"] else None
        )

    def _orders(self) -> list[dict]:
        return [o for o in self._shop.orders.values() if o["customer_id"] == self._r["id"]]

    @property
    def numberOfOrders(self) -> str:
        return str(sum(1 for o in self._orders() if not o["cancelled_at"] and not o["test"]))

    @property
    def amountSpent(self) -> dict:
        total = sum(float(o["total"]) - float(o["refunded"]) for o in self._orders() if not o["cancelled_at"])
        return {"amount": f"{total:.2f}", "currencyCode": "JPY"}

    def orders(self, info, first=None, after=None):
        items = sorted(self._orders(), key=lambda r: r["id"])
        return connection(info, [OrderNode(self._shop, o) for o in items], first, after, lambda n: n.id)


class ProductNode:
    typename = "Product"

    def __init__(self, shop: Shop, record: dict):
        self._r = record
        self.id = gid("Product", record["id"])
        self.handle = record["handle"]
        self.title = record["title"]
        self.productType = record["product_type"]
        self.vendor = record["vendor"]
        self.tags = record["tags"]
        self.status = record["status"]
        self.category = {"fullName": record["category"]} if record["category"] else None
        self.createdAt = iso(record["created_at"])
        self.updatedAt = iso(record["updated_at"])

    def variants(self, info, first=None, after=None):
        items = [VariantNode(v) for v in self._r["variants"]]
        return connection(info, items, first, after, lambda n: n.id)


class VariantNode:
    typename = "ProductVariant"

    def __init__(self, record: dict):
        self.id = gid("ProductVariant", record["id"])
        self.sku = record.get("sku") or None
        self.title = record.get("title") or "Default Title"
        self.price = str(record.get("price") or "0")
        self.position = record["position"]


class LineItemNode:
    typename = "LineItem"

    def __init__(self, shop: Shop, record: dict, currency: str):
        self.id = gid("LineItem", record["id"])
        self.title = record["title"]
        self.name = record["title"]
        self.quantity = record.get("quantity", 1)
        self.sku = record.get("sku") or None
        self.vendor = record.get("vendor") or None
        self.originalUnitPriceSet = money(record.get("price", "0"), currency)
        self.totalDiscountSet = money(record.get("discount", "0"), currency)
        product = shop.products.get(record.get("product_id"))
        self.product = ProductNode(shop, product) if product else None
        self.variant = None


class OrderNode:
    typename = "Order"

    def __init__(self, shop: Shop, record: dict):
        self._shop, self._r = shop, record
        currency = record["currency"]
        self.id = gid("Order", record["id"])
        self.legacyResourceId = str(record["id"])
        self.name = record["name"]
        self.email = record["email"] or None
        self.createdAt = iso(record["created_at"])
        self.processedAt = iso(record["processed_at"])
        self.updatedAt = iso(record["updated_at"])
        self.cancelledAt = iso(record["cancelled_at"])
        self.test = record["test"]
        self.sourceName = record["source_name"] or None
        self.discountCodes = list(record["discount_codes"])
        self.tags = list(record["tags"])
        self.currencyCode = currency
        self.displayFinancialStatus = record["financial_status"]
        self.displayFulfillmentStatus = record["fulfillment_status"]
        self.subtotalPriceSet = money(record["subtotal"], currency)
        self.totalDiscountsSet = money(record["total_discounts"], currency)
        self.totalShippingPriceSet = money(record["shipping"], currency)
        self.totalTaxSet = money(record["tax"], currency)
        self.totalPriceSet = money(record["total"], currency)
        self.totalRefundedSet = money(record["refunded"], currency)
        utm = record.get("utm") or {}
        self.customerJourneySummary = {
            "ready": True,
            "firstVisit": {"landingPage": record["landing_site"] or None, "referrerUrl": record["referring_site"] or None,
                           "source": utm.get("source"), "utmParameters": utm or None},
        }

    @property
    def customer(self):
        record = self._shop.customers.get(self._r["customer_id"])
        return CustomerNode(self._shop, record) if record else None

    def lineItems(self, info, first=None, after=None):
        items = [LineItemNode(self._shop, i, self._r["currency"]) for i in self._r["line_items"]]
        return connection(info, items, first, after, lambda n: n.id)


class BulkOperationNode:
    typename = "BulkOperation"

    def __init__(self, context: Context, op: BulkOperation):
        status = op.current_status()
        self.id = gid("BulkOperation", op.id)
        self.status = status
        self.type = op.type
        self.errorCode = op.error_code
        self.createdAt = iso(op.created_at)
        self.completedAt = iso(now()) if status == "COMPLETED" else None
        self.objectCount = str(len(op.lines)) if status == "COMPLETED" else "0"
        self.rootObjectCount = str(op.root_count) if status == "COMPLETED" else "0"
        done = status == "COMPLETED" and op.lines
        self.fileSize = str(sum(len(line) + 1 for line in op.lines)) if done else None
        self.url = f"{context.base_url}/_files/bulk/{op.id}.jsonl" if done else None
        self.partialDataUrl = None
        self.query = op.query


class SegmentNode:
    typename = "Segment"

    def __init__(self, record: dict):
        self.id = gid("Segment", record["id"])
        self.name = record["name"]
        self.query = record["query"]
        self.creationDate = iso(record["created_at"])
        self.lastEditDate = iso(record["created_at"])


# --- root resolvers ------------------------------------------------------------------------------


def _visible_orders(shop: Shop) -> list[dict]:
    if shop.read_all_orders:
        return list(shop.orders.values())
    cutoff = now() - dt.timedelta(days=60)
    return [o for o in shop.orders.values() if o["created_at"] >= cutoff]


class QueryRoot:
    def __init__(self, context: Context):
        self._c = context
        shop = context.shop
        self.shop = {"id": gid("Shop", 1), "name": shop.name, "myshopifyDomain": shop.domain,
                     "ianaTimezone": "Asia/Tokyo", "currencyCode": "JPY"}

    def node(self, info, id):
        shop = self._c.shop
        match = re.fullmatch(r"gid://shopify/(\w+)/(\d+)", id or "")
        if not match:
            return None
        kind, number = match.group(1), int(match.group(2))
        if kind == "Customer" and number in shop.customers:
            return CustomerNode(shop, shop.customers[number])
        if kind == "Order" and number in shop.orders:
            return OrderNode(shop, shop.orders[number])
        if kind == "Product" and number in shop.products:
            return ProductNode(shop, shop.products[number])
        if kind == "BulkOperation" and number in shop.bulk_operations:
            return BulkOperationNode(self._c, shop.bulk_operations[number])
        if kind == "Segment" and number in shop.segments:
            return SegmentNode(shop.segments[number])
        return None

    def customer(self, info, id):
        node = self.node(info, id)
        return node if isinstance(node, CustomerNode) else None

    def order(self, info, id):
        node = self.node(info, id)
        return node if isinstance(node, OrderNode) else None

    def customers(self, info, first=None, after=None, query=None, sortKey=None, reverse=None):
        shop = self._c.shop
        records = sorted_records(filter(search_filter(query), shop.customers.values()), sortKey, reverse)
        return connection(info, [CustomerNode(shop, r) for r in records], first, after, lambda n: n.id)

    def orders(self, info, first=None, after=None, query=None, sortKey=None, reverse=None):
        shop = self._c.shop
        records = sorted_records(filter(search_filter(query), _visible_orders(shop)), sortKey, reverse)
        return connection(info, [OrderNode(shop, r) for r in records], first, after, lambda n: n.id)

    def products(self, info, first=None, after=None, query=None, sortKey=None, reverse=None):
        shop = self._c.shop
        records = sorted_records(filter(search_filter(query), shop.products.values()), sortKey, reverse)
        return connection(info, [ProductNode(shop, r) for r in records], first, after, lambda n: n.id)

    def segments(self, info, first=None, after=None):
        items = [SegmentNode(r) for r in sorted(self._c.shop.segments.values(), key=lambda r: r["id"])]
        return connection(info, items, first, after, lambda n: n.id)

    def currentBulkOperation(self, info, type="QUERY"):
        ops = [op for op in self._c.shop.bulk_operations.values() if op.type == type]
        return BulkOperationNode(self._c, max(ops, key=lambda op: op.id)) if ops else None


class MutationRoot:
    def __init__(self, context: Context):
        self._c = context

    def _tags(self, id, tags, *, add: bool):
        shop = self._c.shop
        number = parse_gid(id, "Customer")
        if number is None or number not in shop.customers:
            return {"node": None, "userErrors": [{"field": ["id"], "message": "Customer does not exist"}]}
        errors = shop.tags_change(number, tags, add=add)
        shop.tag_calls += 1
        return {"node": None if errors else CustomerNode(shop, shop.customers[number]), "userErrors": errors}

    def tagsAdd(self, info, id, tags):
        return self._tags(id, tags, add=True)

    def tagsRemove(self, info, id, tags):
        return self._tags(id, tags, add=False)

    def _running(self, type_: str) -> BulkOperation | None:
        version = getattr(self._c, "api_version", "9999-99")
        limit = 5 if version >= "2026-01" else 1
        running = [op for op in self._c.shop.bulk_operations.values()
                   if op.current_status() == "RUNNING" and (limit == 5 or op.type == type_)]
        return running[0] if len(running) >= limit else None

    def bulkOperationRunQuery(self, info, query, groupObjects=None):
        busy = self._running("QUERY")
        if busy:
            return {"bulkOperation": None, "userErrors": [{"field": None, "message": (
                f"A bulk query operation for this app and shop is already in progress: {gid('BulkOperation', busy.id)}.")}]}
        try:
            lines, roots = run_bulk_query(self._c, query)
        except GraphQLError as exc:
            return {"bulkOperation": None, "userErrors": [{"field": ["query"], "message": str(exc)}]}
        op = self._new_op("QUERY", query, lines, roots)
        return {"bulkOperation": BulkOperationNode(self._c, op), "userErrors": []}

    def bulkOperationRunMutation(self, info, mutation, stagedUploadPath, clientIdentifier=None):
        busy = self._running("MUTATION")
        if busy:
            return {"bulkOperation": None, "userErrors": [{"field": None, "message": (
                f"A bulk mutation operation for this app and shop is already in progress: {gid('BulkOperation', busy.id)}.")}]}
        content = self._c.world.uploads.get(stagedUploadPath)
        if content is None:
            return {"bulkOperation": None, "userErrors": [
                {"field": ["stagedUploadPath"], "message": "The staged upload was not found."}]}
        try:
            lines = run_bulk_mutation(self._c, mutation, content)
        except GraphQLError as exc:
            return {"bulkOperation": None, "userErrors": [{"field": ["mutation"], "message": str(exc)}]}
        op = self._new_op("MUTATION", mutation, lines, len(lines))
        return {"bulkOperation": BulkOperationNode(self._c, op), "userErrors": []}

    def _new_op(self, type_: str, query: str, lines: list[str], roots: int) -> BulkOperation:
        shop = self._c.shop
        op = BulkOperation(id=next(self._c.world.bulk_ids), type=type_, query=query, created_at=now(),
                           ready_at=time.monotonic() + shop.bulk_seconds, lines=lines, root_count=roots)
        shop.bulk_operations[op.id] = op
        return op

    def stagedUploadsCreate(self, info, input):
        targets = []
        for item in input:
            key = f"tmp/{self._c.shop.domain}/bulk/{len(self._c.world.uploads)}-{time.time_ns()}/{item['filename']}"
            targets.append({
                "url": f"{self._c.base_url}/_files/staged", "resourceUrl": None,
                "parameters": [{"name": "Content-Type", "value": item["mimeType"]},
                               {"name": "success_action_status", "value": "201"},
                               {"name": "acl", "value": "private"}, {"name": "key", "value": key},
                               {"name": "policy", "value": base64.b64encode(b"emulator").decode()}],
            })
        return {"stagedTargets": targets, "userErrors": []}

    def segmentCreate(self, info, name, query):
        shop = self._c.shop
        if any(s["name"] == name for s in shop.segments.values()):
            return {"segment": None, "userErrors": [{"field": ["name"], "message": "Name has already been taken"}]}
        if not re.fullmatch(r"customer_tags CONTAINS '[^']+'", query.strip()):
            return {"segment": None, "userErrors": [
                {"field": ["query"], "message": "The emulator only understands customer_tags CONTAINS '<tag>'"}]}
        record = {"id": shop.next_id(), "name": name, "query": query, "created_at": now()}
        shop.segments[record["id"]] = record
        return {"segment": SegmentNode(record), "userErrors": []}


# --- cost ----------------------------------------------------------------------------------------


def _argument(node: FieldNode, name: str, variables: dict):
    for argument in node.arguments or ():
        if argument.name.value == name:
            return value_from_ast_untyped(argument.value, variables)
    return None


def _selection_cost(parent_type, selection_set, fragments, variables) -> int:
    if selection_set is None:
        return 0
    total = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            name = selection.name.value
            if name.startswith("__") or not hasattr(parent_type, "fields") or name not in parent_type.fields:
                continue
            field_type = parent_type.fields[name].type
            named = get_named_type(field_type)
            if not is_object_type(named) and not hasattr(named, "fields"):
                continue  # scalars and enums cost nothing
            inner = _selection_cost(named, selection.selection_set, fragments, variables)
            if named.name.endswith("Connection"):
                first = _argument(selection, "first", variables) or 0
                total += 2 + int(first) * max(inner, 1)
            elif named.name.endswith("Edge") or name == "nodes":
                total += inner
            elif _is_list(field_type):
                total += inner
            else:
                total += 1 + inner
        elif isinstance(selection, InlineFragmentNode):
            target = SCHEMA.get_type(selection.type_condition.name.value) if selection.type_condition else parent_type
            total += _selection_cost(target, selection.selection_set, fragments, variables)
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments[selection.name.value]
            target = SCHEMA.get_type(fragment.type_condition.name.value)
            total += _selection_cost(target, fragment.selection_set, fragments, variables)
    return total


def _is_list(field_type) -> bool:
    if is_non_null_type(field_type):
        field_type = field_type.of_type
    return is_list_type(field_type)


def query_cost(document, variables: dict) -> int:
    fragments = {d.name.value: d for d in document.definitions if d.kind == "fragment_definition"}
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    if operation.operation.value == "mutation":
        fields = [s for s in operation.selection_set.selections if isinstance(s, FieldNode)]
        return MUTATION_COST * len(fields)
    return max(1, _selection_cost(SCHEMA.query_type, operation.selection_set, fragments, variables))


# --- execution -----------------------------------------------------------------------------------


def parse_and_validate(source: str):
    document = parse(source)
    errors = validate(SCHEMA, document)
    if errors:
        raise errors[0]
    return document


def execute_document(context: Context, document, variables: dict | None) -> dict:
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    root = MutationRoot(context) if operation.operation.value == "mutation" else QueryRoot(context)
    result = execute(SCHEMA, document, root_value=root, context_value=context, variable_values=variables or {})
    out: dict = {"data": result.data}
    if result.errors:
        out["errors"] = [error.formatted for error in result.errors]
    return out


def run_bulk_query(context: Context, query: str) -> tuple[list[str], int]:
    document = parse_and_validate(query)
    bulk = Context(context.world, context.shop, context.base_url, bulk=True)
    result = execute_document(bulk, document, {})
    if result.get("errors"):
        raise GraphQLError(result["errors"][0]["message"])
    lines: list[str] = []
    roots = 0
    for value in (result["data"] or {}).values():
        if isinstance(value, dict) and ("edges" in value or "nodes" in value):
            for node in _connection_nodes(value):
                roots += 1
                _flatten(node, None, lines)
    return lines, roots


def _connection_nodes(value: dict) -> list[dict]:
    if "nodes" in value:
        return value["nodes"]
    return [edge["node"] for edge in value["edges"]]


def _flatten(node: dict, parent_id: str | None, lines: list[str]) -> None:
    children = []
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict) and ("edges" in value or "nodes" in value):
            children.extend(_connection_nodes(value))
        else:
            flat[key] = value
    if parent_id:
        flat["__parentId"] = parent_id
    lines.append(json.dumps(flat, ensure_ascii=False))
    for child in children:
        _flatten(child, node.get("id"), lines)


def run_bulk_mutation(context: Context, mutation: str, content: bytes) -> list[str]:
    document = parse_and_validate(mutation)
    lines = []
    for number, raw in enumerate(line for line in content.decode().splitlines() if line.strip()):
        if context.shop.faults.roll(context.shop.faults.bulk_line_error_rate):
            lines.append(json.dumps({"errors": [{"message": "Internal error. Looks like something went wrong on our end.",
                                                 "extensions": {"code": "INTERNAL_SERVER_ERROR"}}],
                                     "__lineNumber": number}))
            continue
        result = execute_document(context, document, json.loads(raw))
        result["__lineNumber"] = number
        lines.append(json.dumps(result, ensure_ascii=False))
    return lines
