"""A local Shopify: the Admin GraphQL API, bulk operations, staged uploads, OAuth and webhooks.

Tests and ``make demo`` reach "Shopify" here; nothing needs the internet. See docs/shopify.md
(Emulator) for what it covers and how to run it.
"""
