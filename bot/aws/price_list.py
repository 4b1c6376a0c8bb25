"""The AWS Price List Query API (`pricing:GetProducts`) for Amazon Bedrock's token prices.

The Query API is served from a few regions only (us-east-1, eu-central-1, ap-south-1: see
docs/billing.md), whatever region the prices are *for*: the client is built for one of them
and the price region is a `regionCode` filter. `GetProducts` is paginated (`NextToken`, at most
100 items a page); each `PriceList` item is a JSON *string* holding one product and its terms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bot.aws.clients import call

ENDPOINT_REGIONS = ("us-east-1", "eu-central-1", "ap-south-1")
PAGE_SIZE = 100
MAX_PAGES = 200  # a runaway NextToken loop stops here (Bedrock's offers are a few pages a region)


class PriceList:
    def __init__(self, pricing_client: Any) -> None:
        self._c = pricing_client
        self.calls = 0

    def products(self, service_code: str, region: str) -> Iterator[str]:
        """Every PriceList item (a JSON string) of `service_code` priced for `region`."""
        request: dict[str, Any] = {
            "ServiceCode": service_code,
            "FormatVersion": "aws_v1",
            "MaxResults": PAGE_SIZE,
            "Filters": [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}],
        }
        for _ in range(MAX_PAGES):
            self.calls += 1
            page: dict[str, Any] = call("GetProducts", self._c.get_products, **request)
            yield from (item for item in page.get("PriceList", []) if isinstance(item, str))
            token = page.get("NextToken")
            if not token:
                return
            request = {**request, "NextToken": token}
