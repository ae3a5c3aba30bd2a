"""Retail back-office: customers, products and their stock, orders, shipping and refunds.

State is plain JSON data (dicts keyed by id), so a task's `initial_state` is this class's
public attributes as they are. Ids of new objects come from counters kept in the state, so
a replay gives the same ids every time. Tools raise `ValueError` for requests the state
does not allow; the episode turns that into an error result.
"""

from __future__ import annotations

from typing import Literal

Carrier = Literal["UPS", "FedEx", "DHL"]
Reason = Literal["damaged", "wrong_item", "late_delivery", "not_needed"]
OrderStatus = Literal["open", "placed", "shipped", "cancelled", "refunded"]


def _money(x: float) -> float:
    return round(x + 0.0, 2)


class Retail:
    """The back office of a small online shop."""

    def __init__(self) -> None:
        self.customers: dict[str, dict] = {}  # id -> {name, email, address, store_credit}
        self.products: dict[str, dict] = {}  # id -> {name, price, stock}
        self.orders: dict[str, dict] = {}  # id -> {customer_id, items {product_id: qty}, status, discount, carrier, tracking}
        self.refunds: dict[str, dict] = {}  # id -> {order_id, amount, reason}
        self.discounts: dict[str, int] = {}  # code -> percent off
        self.next_order: int = 1
        self.next_refund: int = 1

    # ----------------------------------------------------------------- lookups

    def _customer(self, customer_id: str) -> dict:
        c = self.customers.get(customer_id)
        if c is None:
            raise ValueError(f"no customer with id {customer_id!r}")
        return c

    def _product(self, product_id: str) -> dict:
        p = self.products.get(product_id)
        if p is None:
            raise ValueError(f"no product with id {product_id!r}")
        return p

    def _order(self, order_id: str) -> dict:
        o = self.orders.get(order_id)
        if o is None:
            raise ValueError(f"no order with id {order_id!r}")
        return o

    def _total(self, order: dict) -> float:
        total = sum(self.products[pid]["price"] * qty for pid, qty in order["items"].items())
        if order["discount"]:
            total *= 1 - self.discounts[order["discount"]] / 100
        return _money(total)

    # ----------------------------------------------------------------- customers

    def find_customer(self, name: str) -> dict:
        """Find a customer by full name.

        Args:
            name: The customer's full name, e.g. 'Ada Moreno'.
        """
        for cid, c in self.customers.items():
            if c["name"] == name:
                return {"customer_id": cid, "name": c["name"], "email": c["email"]}
        raise ValueError(f"no customer named {name!r}")

    def get_customer(self, customer_id: str) -> dict:
        """Get a customer's full record: email, address and store credit.

        Args:
            customer_id: The customer's id, as returned by find_customer.
        """
        return {"customer_id": customer_id, **self._customer(customer_id)}

    def update_address(self, customer_id: str, address: str) -> dict:
        """Change a customer's shipping address.

        Args:
            customer_id: The customer's id, as returned by find_customer.
            address: The new shipping address.
        """
        if not address.strip():
            raise ValueError("address must not be empty")
        self._customer(customer_id)["address"] = address
        return {"customer_id": customer_id, "address": address}

    # ----------------------------------------------------------------- products

    def find_product(self, name: str) -> dict:
        """Find a product by name; gives its id, price and units in stock.

        Args:
            name: The product name, e.g. 'Blue Mug'.
        """
        for pid, p in self.products.items():
            if p["name"] == name:
                return {"product_id": pid, **p}
        raise ValueError(f"no product named {name!r}")

    def restock(self, product_id: str, quantity: int) -> dict:
        """Add units of a product to the inventory.

        Args:
            product_id: The product's id, as returned by find_product.
            quantity: How many units arrive (at least 1).
        """
        if quantity < 1:
            raise ValueError("quantity must be at least 1")
        p = self._product(product_id)
        p["stock"] += quantity
        return {"product_id": product_id, "stock": p["stock"]}

    def set_price(self, product_id: str, price: float) -> dict:
        """Change a product's unit price.

        Args:
            product_id: The product's id, as returned by find_product.
            price: The new unit price in dollars (more than 0).
        """
        if price <= 0:
            raise ValueError("price must be more than 0")
        p = self._product(product_id)
        p["price"] = _money(price)
        return {"product_id": product_id, "price": p["price"]}

    # ----------------------------------------------------------------- orders

    def create_order(self, customer_id: str) -> dict:
        """Open a new, empty order for a customer.

        Args:
            customer_id: The customer's id, as returned by find_customer.
        """
        self._customer(customer_id)
        order_id = f"O-{self.next_order:04d}"
        self.next_order += 1
        self.orders[order_id] = {"customer_id": customer_id, "items": {}, "status": "open",
                                 "discount": None, "carrier": None, "tracking": None}
        return {"order_id": order_id, "status": "open"}

    def add_item(self, order_id: str, product_id: str, quantity: int) -> dict:
        """Add units of a product to an open order (they must be in stock).

        Args:
            order_id: The order's id, as returned by create_order or list_orders.
            product_id: The product's id, as returned by find_product.
            quantity: How many units to add (at least 1).
        """
        order, product = self._order(order_id), self._product(product_id)
        if order["status"] != "open":
            raise ValueError(f"order {order_id} is {order['status']}, not open")
        if quantity < 1:
            raise ValueError("quantity must be at least 1")
        wanted = order["items"].get(product_id, 0) + quantity
        if wanted > product["stock"]:
            raise ValueError(f"only {product['stock']} units of {product['name']} in stock")
        order["items"][product_id] = wanted
        return {"order_id": order_id, "items": order["items"], "total": self._total(order)}

    def remove_item(self, order_id: str, product_id: str) -> dict:
        """Remove a product from an open order.

        Args:
            order_id: The order's id.
            product_id: The product's id, as returned by find_product.
        """
        order = self._order(order_id)
        if order["status"] != "open":
            raise ValueError(f"order {order_id} is {order['status']}, not open")
        if product_id not in order["items"]:
            raise ValueError(f"product {product_id} is not in order {order_id}")
        del order["items"][product_id]
        return {"order_id": order_id, "items": order["items"], "total": self._total(order)}

    def apply_discount(self, order_id: str, code: str) -> dict:
        """Apply a discount code to an open order.

        Args:
            order_id: The order's id.
            code: The discount code, e.g. 'SPRING10'.
        """
        order = self._order(order_id)
        if code not in self.discounts:
            raise ValueError(f"unknown discount code {code!r}")
        if order["status"] != "open":
            raise ValueError(f"order {order_id} is {order['status']}, not open")
        order["discount"] = code
        return {"order_id": order_id, "discount": code, "total": self._total(order)}

    def get_order(self, order_id: str) -> dict:
        """Get an order: customer, items, status, total and tracking number.

        Args:
            order_id: The order's id.
        """
        order = self._order(order_id)
        return {"order_id": order_id, **order, "total": self._total(order)}

    def list_orders(self, customer_id: str, status: OrderStatus | None = None) -> list:
        """List a customer's orders, optionally only those with a given status.

        Args:
            customer_id: The customer's id, as returned by find_customer.
            status: Only orders with this status (open, placed, shipped, cancelled, refunded).
        """
        self._customer(customer_id)
        return [{"order_id": oid, "status": o["status"], "total": self._total(o)}
                for oid, o in self.orders.items()
                if o["customer_id"] == customer_id and (status is None or o["status"] == status)]

    def place_order(self, order_id: str) -> dict:
        """Place an open order: its units are taken from stock and it waits for shipping.

        Args:
            order_id: The order's id.
        """
        order = self._order(order_id)
        if order["status"] != "open":
            raise ValueError(f"order {order_id} is {order['status']}, not open")
        if not order["items"]:
            raise ValueError(f"order {order_id} has no items")
        for pid, qty in order["items"].items():
            if self.products[pid]["stock"] < qty:
                raise ValueError(f"only {self.products[pid]['stock']} units of {self.products[pid]['name']} in stock")
        for pid, qty in order["items"].items():
            self.products[pid]["stock"] -= qty
        order["status"] = "placed"
        return {"order_id": order_id, "status": "placed", "total": self._total(order)}

    def ship_order(self, order_id: str, carrier: Carrier) -> dict:
        """Ship a placed order with a carrier; gives the tracking number.

        Args:
            order_id: The order's id.
            carrier: The carrier: UPS, FedEx or DHL.
        """
        order = self._order(order_id)
        if order["status"] != "placed":
            raise ValueError(f"order {order_id} is {order['status']}, not placed")
        if carrier not in ("UPS", "FedEx", "DHL"):
            raise ValueError(f"unknown carrier {carrier!r}")
        order["status"] = "shipped"
        order["carrier"] = carrier
        order["tracking"] = f"{carrier.upper()}-{order_id[2:]}{len(order['items'])}"
        return {"order_id": order_id, "status": "shipped", "tracking": order["tracking"]}

    def cancel_order(self, order_id: str) -> dict:
        """Cancel an order that has not shipped; placed units go back to stock.

        Args:
            order_id: The order's id.
        """
        order = self._order(order_id)
        if order["status"] not in ("open", "placed"):
            raise ValueError(f"order {order_id} is {order['status']} and cannot be cancelled")
        if order["status"] == "placed":
            for pid, qty in order["items"].items():
                self.products[pid]["stock"] += qty
        order["status"] = "cancelled"
        return {"order_id": order_id, "status": "cancelled"}

    def refund_order(self, order_id: str, reason: Reason) -> dict:
        """Refund a shipped order as store credit to its customer.

        Args:
            order_id: The order's id.
            reason: Why: damaged, wrong_item, late_delivery or not_needed.
        """
        order = self._order(order_id)
        if order["status"] != "shipped":
            raise ValueError(f"order {order_id} is {order['status']}, only shipped orders can be refunded")
        if reason not in ("damaged", "wrong_item", "late_delivery", "not_needed"):
            raise ValueError(f"unknown reason {reason!r}")
        amount = self._total(order)
        refund_id = f"R-{self.next_refund:04d}"
        self.next_refund += 1
        self.refunds[refund_id] = {"order_id": order_id, "amount": amount, "reason": reason}
        order["status"] = "refunded"
        customer = self.customers[order["customer_id"]]
        customer["store_credit"] = _money(customer["store_credit"] + amount)
        return {"refund_id": refund_id, "amount": amount, "store_credit": customer["store_credit"]}
