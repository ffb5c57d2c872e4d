"""The handler of docs/your-service.md: the Shop service of shop.thrift, in memory."""

import itertools
import logging
import threading
from pathlib import Path

import offloop

# The worker's own module of classes for this file: raise and return these. Found next to
# this file, not in the current directory, so that it loads from wherever the worker starts.
shop = offloop.load_idl(Path(__file__).with_name("shop.thrift"))

log = logging.getLogger("shop")

STORAGE = {"tea": shop.Storage.SHELF, "milk": shop.Storage.FRIDGE, "ice": shop.Storage.FREEZER}


class Handler:
    """One method per method of the service, arguments in IDL order."""

    def __init__(self) -> None:  # called once, with no arguments, when the worker starts
        self.stock_by_sku = {"tea": 12, "milk": 3, "ice": 0}
        self.order_ids = itertools.count(1)
        self.lock = threading.Lock()  # a thread pool calls this object from several threads

    def _check(self, sku: str) -> None:
        if sku not in self.stock_by_sku:
            raise shop.UnknownItem(sku=sku)

    def stock(self, skus: list[str]) -> dict[str, int]:
        with self.lock:
            for sku in skus:
                self._check(sku)
            return {sku: self.stock_by_sku[sku] for sku in skus}

    def place(self, order: shop.Order) -> shop.Receipt:
        with self.lock:
            wanted: dict[str, int] = {}
            for line in order.lines:
                self._check(line.sku)
                wanted[line.sku] = wanted.get(line.sku, 0) + line.quantity
            for sku, quantity in wanted.items():
                if quantity > self.stock_by_sku[sku]:
                    raise shop.OutOfStock(sku=sku, available=self.stock_by_sku[sku])
            for sku, quantity in wanted.items():
                self.stock_by_sku[sku] -= quantity
            coldest = max((STORAGE[sku] for sku in wanted), default=shop.Storage.SHELF)
            return shop.Receipt(order_id=next(self.order_ids), reserved=wanted, coldest=coldest)

    def restock(self, sku: str, quantity: int) -> None:
        with self.lock:
            self._check(sku)
            self.stock_by_sku[sku] += quantity

    def note(self, text: str) -> None:
        log.info("note for the shopkeeper: %s", text)
