"""Retail seed stories: the random world and the request templates (intents).

Every intent checks that it applies before making any call, picks real entities from the
live state, runs its reference calls through `story.run`, and returns the request text
(plus, where one required value can be left out, the vague request and the clarification).
"""

from __future__ import annotations

import random

from rodscli.envs.builtin.seeds import Story, Turn, intent

FIRST = ["Ada", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Keiko", "Liam",
         "Maya", "Nikos", "Olga", "Pablo", "Quinn", "Rosa", "Samir", "Tara", "Umar", "Vera", "Wendy", "Xavier",
         "Yara", "Zane", "Amir", "Bea", "Carlos", "Dana", "Emil", "Fiona", "Gustav", "Hana", "Ivan", "Julia"]
LAST = ["Moreno", "Okafor", "Lindqvist", "Tanaka", "Novak", "Haddad", "Fischer", "Rossi", "Kowalski", "Silva",
        "Nguyen", "Petrov", "Dubois", "Larsen", "Mendes", "Kaur", "Schmidt", "Costa", "Ibrahim", "Varga",
        "Brennan", "Sato", "Ortiz", "Weber", "Alvarez", "Jensen", "Murphy", "Castillo", "Yilmaz", "Berg"]
ADJ = ["Blue", "Red", "Green", "Black", "White", "Steel", "Bamboo", "Wool", "Glass", "Oak", "Copper", "Linen",
       "Ceramic", "Leather", "Canvas", "Silver", "Cotton", "Marble", "Walnut", "Stone"]
NOUN = ["Mug", "Lamp", "Backpack", "Water Bottle", "Notebook", "Desk Mat", "Teapot", "Blanket", "Vase", "Chair",
        "Scarf", "Wallet", "Clock", "Cutting Board", "Pillow", "Plant Pot", "Tray", "Candle", "Bowl", "Umbrella",
        "Headphones", "Keyboard", "Planner", "Jar"]
STREETS = ["Maple", "Harbor", "Cedar", "Mill", "Station", "Orchard", "Bridge", "Park", "Hill", "River", "Elm", "King"]
CITIES = ["Springfield", "Riverton", "Lakeside", "Fairview", "Brookhaven", "Westport", "Oakridge", "Milford"]
CODES = {"SPRING10": 10, "WELCOME15": 15, "VIP20": 20, "SUMMER5": 5, "FALL25": 25, "LOYAL30": 30}
CARRIERS = ["UPS", "FedEx", "DHL"]
REASONS = {"damaged": "arrived damaged", "wrong_item": "was the wrong item", "late_delivery": "arrived far too late",
           "not_needed": "is no longer needed"}


def _address(rng: random.Random) -> str:
    return f"{rng.randint(1, 999)} {rng.choice(STREETS)} {rng.choice(['Street', 'Road', 'Avenue', 'Lane'])}, {rng.choice(CITIES)}"


def world(rng: random.Random, large: bool = False) -> dict:
    """A random shop: customers, products, discount codes and some earlier orders.

    `large` adds many distractor customers, products and orders (long_context).
    """
    n_customers, n_products, n_orders = (rng.randint(150, 220), rng.randint(120, 160), rng.randint(150, 220)) if large \
        else (rng.randint(6, 9), rng.randint(8, 12), rng.randint(4, 7))
    names = rng.sample([f"{f} {lname}" for f in FIRST for lname in LAST], n_customers)
    customers = {}
    for i, name in enumerate(names, 1):
        email = name.lower().replace(" ", ".") + "@example.com"
        credit = float(rng.choice([0, 0, 0, 5, 10, 12.5, 20, 35]))
        customers[f"C-{i:04d}"] = {"name": name, "email": email, "address": _address(rng), "store_credit": credit}
    products = {}
    for i, name in enumerate(rng.sample([f"{a} {n}" for a in ADJ for n in NOUN], n_products), 1):
        price = round(rng.randint(4, 120) - rng.choice([0.01, 0.05, 0.5, 0]), 2)
        products[f"P-{i:04d}"] = {"name": name, "price": price, "stock": rng.randint(6, 40)}
    orders = {}
    cids, pids = list(customers), list(products)
    for i in range(1, n_orders + 1):
        items = {pid: rng.randint(1, 3) for pid in rng.sample(pids, rng.randint(1, 2))}
        status = rng.choice(["placed", "shipped", "shipped", "cancelled"])
        carrier = rng.choice(CARRIERS) if status == "shipped" else None
        orders[f"O-{i:04d}"] = {
            "customer_id": rng.choice(cids), "items": items, "status": status, "discount": None, "carrier": carrier,
            "tracking": f"{carrier.upper()}-{i:04d}{len(items)}" if carrier else None,
        }
    discounts = {code: CODES[code] for code in rng.sample(sorted(CODES), 3)}
    return {"customers": customers, "products": products, "orders": orders, "refunds": {}, "discounts": discounts,
            "next_order": n_orders + 1, "next_refund": 1}


def _customer(s: Story) -> tuple[str, str]:
    cid = s.rng.choice(sorted(s.sim.customers))
    return cid, s.sim.customers[cid]["name"]


def _product(s: Story, min_stock: int = 1, avoid: tuple = ()) -> tuple[str, str] | None:
    pids = sorted(p for p, v in s.sim.products.items() if v["stock"] >= min_stock and p not in avoid)
    if not pids:
        return None
    pid = s.rng.choice(pids)
    return pid, s.sim.products[pid]["name"]


def _open_order(s: Story) -> str | None:
    oid = s.ctx.get("order")
    return oid if oid and s.sim.orders[oid]["status"] == "open" else None


# ------------------------------------------------------------------------- customers

@intent(calls=1)
def customer_email(s: Story) -> Turn:
    _, name = _customer(s)
    s.ctx["customer"] = s.run("find_customer", name=name)["customer_id"]
    return Turn(f"What is the email address of our customer {name}?",
                "What is the email address of one of our customers?", f"The customer is {name}.")


@intent(calls=2)
def customer_credit(s: Story) -> Turn:
    _, name = _customer(s)
    cid = s.run("find_customer", name=name)["customer_id"]
    s.run("get_customer", customer_id=cid)
    s.ctx["customer"] = cid
    return Turn(f"How much store credit does {name} have?", "How much store credit does one of our customers have?",
                f"I mean {name}.")


@intent(calls=1, follow_up=True)
def their_address(s: Story) -> Turn | None:
    cid = s.ctx.get("customer")
    if not cid:
        return None
    s.run("get_customer", customer_id=cid)
    return Turn("What shipping address do we have for them?")


@intent(calls=2)
def update_address(s: Story) -> Turn:
    _, name = _customer(s)
    address = _address(s.rng)
    cid = s.run("find_customer", name=name)["customer_id"]
    s.run("update_address", customer_id=cid, address=address)
    s.ctx["customer"] = cid
    return Turn(f"{name} has moved. Please change their address to {address}.",
                f"{name} has moved. Please change their address.", f"The new address is {address}.")


# ------------------------------------------------------------------------- products

@intent(calls=1)
def stock_level(s: Story) -> Turn:
    _, pname = _product(s)  # type: ignore[misc]
    s.ctx["product"] = s.run("find_product", name=pname)["product_id"]
    return Turn(f"How many units of {pname} do we have in stock?")


@intent(calls=2)
def restock(s: Story) -> Turn:
    _, pname = _product(s)  # type: ignore[misc]
    qty = s.rng.choice([5, 10, 12, 20, 25, 50])
    pid = s.run("find_product", name=pname)["product_id"]
    s.run("restock", product_id=pid, quantity=qty)
    s.ctx["product"] = pid
    return Turn(f"We received {qty} units of {pname}. Please add them to the stock.",
                f"We received a delivery of {pname}. Please add it to the stock.", f"It was {qty} units.")


@intent(calls=2)
def set_price(s: Story) -> Turn:
    _, pname = _product(s)  # type: ignore[misc]
    price = round(s.rng.randint(5, 150) - 0.01, 2)
    pid = s.run("find_product", name=pname)["product_id"]
    s.run("set_price", product_id=pid, price=price)
    s.ctx["product"] = pid
    return Turn(f"Change the price of {pname} to {price:.2f} dollars.", f"Change the price of {pname}.",
                f"The new price is {price:.2f} dollars.")


# ------------------------------------------------------------------------- orders

@intent(calls=4)
def new_order(s: Story) -> Turn | None:
    picked = _product(s, min_stock=3)
    if picked is None:
        return None
    _, name = _customer(s)
    _, pname = picked
    qty = s.rng.randint(1, 3)
    cid = s.run("find_customer", name=name)["customer_id"]
    pid = s.run("find_product", name=pname)["product_id"]
    oid = s.run("create_order", customer_id=cid)["order_id"]
    s.run("add_item", order_id=oid, product_id=pid, quantity=qty)
    s.ctx.update(customer=cid, order=oid, product=pid, items=[pid])
    return Turn(f"Create an order for {name} with {qty} units of {pname}.",
                f"Create an order for {name} with some units of {pname}.", f"Make it {qty} units.")


@intent(calls=2, follow_up=True)
def add_more(s: Story) -> Turn | None:
    oid = _open_order(s)
    picked = _product(s, min_stock=3, avoid=tuple(s.ctx.get("items", ()))) if oid else None
    if picked is None:
        return None
    _, pname = picked
    qty = s.rng.randint(1, 3)
    pid = s.run("find_product", name=pname)["product_id"]
    s.run("add_item", order_id=oid, product_id=pid, quantity=qty)
    s.ctx["items"] = [*s.ctx.get("items", []), pid]
    return Turn(f"Also add {qty} units of {pname} to that order.", f"Also add some units of {pname} to that order.",
                f"Add {qty} units.")


@intent(calls=1, follow_up=True)
def remove_first_item(s: Story) -> Turn | None:
    oid = _open_order(s)
    items = s.ctx.get("items", [])
    if not oid or len(items) < 2:
        return None
    pid = items[0]
    s.run("remove_item", order_id=oid, product_id=pid)
    s.ctx["items"] = items[1:]
    return Turn(f"Actually, take the {s.sim.products[pid]['name']} out of that order.")


@intent(calls=1, follow_up=True)
def discount(s: Story) -> Turn | None:
    oid = _open_order(s)
    if not oid or s.sim.orders[oid]["discount"]:
        return None
    code = s.rng.choice(sorted(s.sim.discounts))
    s.run("apply_discount", order_id=oid, code=code)
    return Turn(f"Apply the discount code {code} to that order.", "Apply a discount code to that order.",
                f"The code is {code}.")


@intent(calls=1, follow_up=True)
def order_total(s: Story) -> Turn | None:
    oid = s.ctx.get("order")
    if not oid:
        return None
    s.run("get_order", order_id=oid)
    return Turn("What is the total of that order now?")


@intent(calls=1, follow_up=True)
def place(s: Story) -> Turn | None:
    oid = _open_order(s)
    if not oid or not s.sim.orders[oid]["items"]:
        return None
    s.run("place_order", order_id=oid)
    return Turn("Please place that order now.")


@intent(calls=1, follow_up=True)
def ship(s: Story) -> Turn | None:
    oid = s.ctx.get("order")
    if not oid or s.sim.orders[oid]["status"] != "placed":
        return None
    carrier = s.rng.choice(CARRIERS)
    s.run("ship_order", order_id=oid, carrier=carrier)
    return Turn(f"Ship that order with {carrier} and tell me the tracking number.",
                "Ship that order and tell me the tracking number.", f"Use {carrier}.")


def _only_order(s: Story, status: str) -> tuple[str, str] | None:
    """A customer with exactly one order of `status`, and that order."""
    by_customer: dict[str, list[str]] = {}
    for oid, o in s.sim.orders.items():
        if o["status"] == status:
            by_customer.setdefault(o["customer_id"], []).append(oid)
    single = sorted((c, oids[0]) for c, oids in by_customer.items() if len(oids) == 1)
    return s.rng.choice(single) if single else None


@intent(calls=3)
def cancel_pending(s: Story) -> Turn | None:
    picked = _only_order(s, "placed")
    if picked is None:
        return None
    cid, oid = picked
    name = s.sim.customers[cid]["name"]
    s.run("find_customer", name=name)
    s.run("list_orders", customer_id=cid, status="placed")
    s.run("cancel_order", order_id=oid)
    s.ctx.update(customer=cid, order=oid)
    return Turn(f"{name} wants to cancel their order that is placed but not shipped yet.")


@intent(calls=3)
def refund_shipped(s: Story) -> Turn | None:
    picked = _only_order(s, "shipped")
    if picked is None:
        return None
    cid, oid = picked
    name = s.sim.customers[cid]["name"]
    reason = s.rng.choice(sorted(REASONS))
    s.run("find_customer", name=name)
    s.run("list_orders", customer_id=cid, status="shipped")
    s.run("refund_order", order_id=oid, reason=reason)
    s.ctx.update(customer=cid, order=oid)
    return Turn(f"{name} says their shipped order {REASONS[reason]}. Please refund it.",
                f"{name} has a problem with their shipped order. Please refund it.",
                f"They say it {REASONS[reason]}.")


@intent(calls=2)
def order_history(s: Story) -> Turn:
    _, name = _customer(s)
    cid = s.run("find_customer", name=name)["customer_id"]
    s.run("list_orders", customer_id=cid)
    s.ctx["customer"] = cid
    return Turn(f"List all orders of {name}.", "List all orders of one of our customers.", f"The customer is {name}.")


@intent(calls=3, follow_up=True)
def order_for_them(s: Story) -> Turn | None:
    cid = s.ctx.get("customer")
    picked = _product(s, min_stock=3) if cid else None
    if picked is None:
        return None
    _, pname = picked
    qty = s.rng.randint(1, 3)
    pid = s.run("find_product", name=pname)["product_id"]
    oid = s.run("create_order", customer_id=cid)["order_id"]
    s.run("add_item", order_id=oid, product_id=pid, quantity=qty)
    s.ctx.update(order=oid, product=pid, items=[pid])
    return Turn(f"Open a new order for them with {qty} units of {pname}.",
                f"Open a new order for them with {pname}.", f"They want {qty} units.")


INTENTS = [customer_email, customer_credit, their_address, update_address, stock_level, restock, set_price,
           new_order, add_more, remove_first_item, discount, order_total, place, ship, cancel_pending,
           refund_shipped, order_history, order_for_them]
