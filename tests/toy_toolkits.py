"""A small toolkit in tau2-bench's shape, for the pyclass adapter's tests (importable as
`toy_toolkits:...`): a pydantic database given to the constructor, tools marked by a
decorator, documented helpers that are not tools, pydantic and dataclass results."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field


def tool(fn):
    """Mark a method as a tool (tau2's `@is_tool` sets `__tool__` the same way)."""
    fn.is_tool = True
    return fn


class Priority(enum.Enum):
    normal = "normal"
    rush = "rush"


class Item(BaseModel):
    """One line of an order."""

    name: str = Field(description="Product name")
    qty: int = Field(description="How many")


class Order(BaseModel):
    order_id: str
    items: list[Item]
    status: Literal["open", "cancelled"] = "open"
    notes: dict[str, str] = Field(default_factory=dict)


class ShopDB(BaseModel):
    orders: dict[str, Order]
    stock: dict[str, int]


@dataclass
class Receipt:
    order_id: str
    total_qty: int
    priority: Priority


def make_db(n_orders: int = 40) -> ShopDB:
    """A database with `n_orders` orders (more than copy_on_write.SMALL: copied on write)."""
    orders = {f"o{i}": Order(order_id=f"o{i}", items=[Item(name="pen", qty=i % 3 + 1)]) for i in range(n_orders)}
    stock = {f"p{i}": 10 for i in range(30)} | {"pen": 100}
    return ShopDB(orders=orders, stock=stock)


class ShopTools:
    """The shop's toolkit: it needs its database to be built."""

    db: ShopDB

    def __init__(self, db: ShopDB, currency: str = "EUR") -> None:
        self.db = db
        self.currency = currency

    @tool
    def get_order(self, order_id: str) -> Order:
        """Get an order.

        Args:
            order_id: The order id, such as 'o1'.
        """
        return self.db.orders[order_id]

    @tool
    def place_order(self, order_id: str, items: list[Item | dict], priority: Priority = Priority.normal,
                    note: str | None = None) -> Order:
        """Place an order.

        Args:
            order_id: The new order's id.
            items: What to order.
            priority: How fast.
            note: A note for the shop.
        """
        if order_id in self.db.orders:
            raise ValueError(f"order {order_id} exists")
        lines = [Item(**i) if isinstance(i, dict) else i for i in items]
        for line in lines:
            if self.db.stock.get(line.name, 0) < line.qty:
                raise ValueError(f"not enough {line.name}")
            self.db.stock[line.name] -= line.qty
        order = Order(order_id=order_id, items=lines, notes={"note": note} if note else {})
        self.db.orders[order_id] = order
        return order

    @tool
    def cancel(self, order_id: str) -> Order:
        """Cancel an order; its items go back to stock.

        Args:
            order_id: The order id.
        """
        order = self.db.orders[order_id]
        order.status = "cancelled"
        for line in order.items:
            self.db.stock[line.name] = self.db.stock.get(line.name, 0) + line.qty
        return order

    @tool
    def receipt(self, order_id: str, priority: Priority = Priority.normal) -> Receipt:
        """A receipt for an order.

        Args:
            order_id: The order id.
            priority: How it was shipped.
        """
        order = self.db.orders[order_id]
        return Receipt(order_id, sum(i.qty for i in order.items), priority)

    @tool
    def matrix(self, rows: list[list[int]], tags: dict[str, int] | None = None) -> int:
        """Sum a matrix.

        Args:
            rows: Rows of numbers.
            tags: Optional weights.
        """
        return sum(map(sum, rows))

    def update_db(self, data: dict) -> None:
        """Replace the database (a documented helper, not a tool)."""
        self.db = ShopDB.model_validate(data)

    def get_db_hash(self) -> str:
        """Hash of the database (a documented helper, not a tool)."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps(self.db.model_dump(), sort_keys=True).encode()).hexdigest()

    def load(self, config: dict) -> None:
        """Load a scenario (a documented loader method, not a tool)."""
        self.currency = config.get("currency", self.currency)


def load_shop(toolkit: ShopTools, config: dict) -> None:
    """A loader function: sets the currency and closes the orders listed."""
    toolkit.currency = config["currency"]
    for order_id in config.get("cancelled", []):
        toolkit.db.orders[order_id].status = "cancelled"


def read_only(name: str, fn) -> bool:
    """A tool predicate: the tools that do not write."""
    return getattr(fn, "is_tool", False) and name in {"get_order", "receipt"}


class Fragile:
    """A class that needs an argument nobody gives it."""

    def __init__(self, db: ShopDB) -> None:
        self.db = db

    def ping(self) -> str:
        """Ping."""
        return "pong"


class Desk:
    """A class built without arguments whose attribute is annotated with a pydantic model."""

    current: Order | None

    def __init__(self) -> None:
        self.current = None

    def close_current(self) -> str:
        """Close the current order."""
        self.current.status = "cancelled"
        return self.current.order_id


@dataclass
class Node:
    """A recursive type: its schema stops after a few levels."""

    name: str
    children: list[Node]
