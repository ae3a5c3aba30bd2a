"""Workspace seed stories: the random world and the request templates (intents).

Same contract as retail_seeds: an intent checks it applies before any call, picks real
entities, runs its reference calls through `story.run`, and returns the request text.
"""

from __future__ import annotations

import random

from rodscli.envs.builtin.retail_seeds import FIRST, LAST
from rodscli.envs.builtin.seeds import Story, Turn, intent

FOLDERS = ["docs", "reports", "projects", "archive", "personal", "finance", "team", "drafts"]
NEW_FOLDERS = ["old-notes", "q3-planning", "shared", "clients", "legal", "travel", "hr", "review"]
BASES = ["budget", "meeting-notes", "roadmap", "invoice-march", "todo", "ideas", "contract", "summary", "draft",
         "travel-plan", "onboarding", "release-notes", "minutes", "report-q1", "report-q2", "checklist"]
EXTS = [".txt", ".md"]
LINES = ["Call the supplier on Monday", "Review the numbers with finance", "Send the slides to the team",
         "Book a room for the workshop", "Update the project timeline", "Ask legal about the contract",
         "Prepare the demo", "Collect feedback from users", "Archive last year's files", "Order new laptops",
         "Check the travel budget", "Draft the newsletter"]
TITLES = ["Team sync", "Budget review", "Design review", "Client call", "Sprint planning", "Lunch and learn",
          "Quarterly review", "Hiring panel", "Retro", "Roadmap planning", "Vendor meeting", "Training session"]
DAYS = [f"2025-06-{d:02d}" for d in (2, 3, 4, 5, 6, 9, 10, 11, 12, 13)]
STARTS = [f"{h:02d}:{m:02d}" for h in range(9, 17) for m in (0, 30)]
LENGTHS = [30, 45, 60, 90]


def _fits(events: dict, day: str, start: str, minutes: int, skip: str | None = None) -> bool:
    def mins(t: str) -> int:
        return int(t[:2]) * 60 + int(t[3:])

    b = mins(start)
    return not any(eid != skip and e["day"] == day and b < mins(e["start"]) + e["minutes"] and mins(e["start"]) < b + minutes
                   for eid, e in events.items())


def world(rng: random.Random, large: bool = False) -> dict:
    """A random workspace: folders with files, contacts and a calendar.

    `large` adds many distractor files, contacts and events (long_context).
    """
    folders = list(FOLDERS) + [f"client-{i:02d}" for i in range(1, 9)] if large else rng.sample(FOLDERS, rng.randint(3, 5))
    n_files, n_contacts, n_events = (rng.randint(200, 260), rng.randint(100, 140), rng.randint(35, 50)) if large \
        else (rng.randint(8, 12), rng.randint(5, 8), rng.randint(3, 6))
    names = [b + e for b in BASES for e in EXTS]
    if large:
        names += [f"{b}-{i}{e}" for b in BASES for i in range(2, 8) for e in EXTS]
    slots = rng.sample([(f, n) for f in folders for n in names], n_files)
    files = {}
    for i, (folder, name) in enumerate(slots, 1):
        files[f"F-{i:04d}"] = {"name": name, "folder": folder, "content": "\n".join(rng.sample(LINES, rng.randint(1, 3))),
                               "shared_with": []}
    contacts = {}
    for i, name in enumerate(rng.sample([f"{f} {lname}" for f in FIRST for lname in LAST], n_contacts), 1):
        contacts[f"K-{i:04d}"] = {"name": name, "email": name.split()[0].lower() + "." + name.split()[1].lower() + "@company.com"}
    events: dict[str, dict] = {}
    # the calendar has room for about 80 events; a bounded number of draws keeps a full one from looping
    for _ in range(50 * n_events):
        if len(events) >= n_events:
            break
        day, start, minutes = rng.choice(DAYS), rng.choice(STARTS), rng.choice(LENGTHS)
        if _fits(events, day, start, minutes):
            events[f"E-{len(events) + 1:04d}"] = {"title": rng.choice(TITLES), "day": day, "start": start,
                                                  "minutes": minutes, "attendees": [], "attachments": []}
    return {"folders": folders, "files": files, "contacts": contacts, "events": events,
            "next_file": n_files + 1, "next_event": n_events + 1}


def _file(s: Story) -> tuple[str, str, str]:
    fid = s.rng.choice(sorted(s.sim.files))
    f = s.sim.files[fid]
    return fid, f["name"], f["folder"]


def _contact(s: Story) -> str:
    return s.sim.contacts[s.rng.choice(sorted(s.sim.contacts))]["name"]


def _free_slot(s: Story, minutes: int, skip: str | None = None) -> tuple[str, str] | None:
    slots = [(d, t) for d in DAYS for t in STARTS if _fits(s.sim.events, d, t, minutes, skip)]
    return s.rng.choice(slots) if slots else None


def _day(day: str) -> str:
    return f"June {int(day[-2:])}, 2025 ({day})"


# ------------------------------------------------------------------------- files

@intent(calls=2)
def read(s: Story) -> Turn:
    _, name, folder = _file(s)
    fid = s.run("find_file", name=name, folder=folder)["file_id"]
    s.run("read_file", file_id=fid)
    s.ctx["file"] = fid
    return Turn(f"Show me what {name} in the {folder} folder says.", f"Show me what {name} says.",
                f"It is in the {folder} folder.")


@intent(calls=2)
def append(s: Story) -> Turn:
    _, name, folder = _file(s)
    line = s.rng.choice(LINES)
    fid = s.run("find_file", name=name, folder=folder)["file_id"]
    s.run("append_to_file", file_id=fid, text=line)
    s.ctx["file"] = fid
    return Turn(f"Add the line '{line}' to {name} in the {folder} folder.",
                f"Add a line to {name} in the {folder} folder.", f"The line is '{line}'.")


@intent(calls=2)
def move(s: Story) -> Turn | None:
    fid, name, folder = _file(s)
    targets = sorted(f for f in s.sim.folders if f != folder
                     and not any(g["name"] == name and g["folder"] == f for g in s.sim.files.values()))
    if not targets:
        return None
    target = s.rng.choice(targets)
    s.run("find_file", name=name, folder=folder)
    s.run("move_file", file_id=fid, folder=target)
    s.ctx["file"] = fid
    return Turn(f"Move {name} from the {folder} folder to the {target} folder.",
                f"Move {name} from the {folder} folder to another folder.", f"Put it in the {target} folder.")


@intent(calls=3)
def new_folder_move(s: Story) -> Turn | None:
    new = [f for f in NEW_FOLDERS if f not in s.sim.folders]
    if not new:
        return None
    target = s.rng.choice(new)
    fid, name, folder = _file(s)
    s.run("create_folder", name=target)
    s.run("find_file", name=name, folder=folder)
    s.run("move_file", file_id=fid, folder=target)
    s.ctx["file"] = fid
    return Turn(f"Create a folder named {target} and move {name} from the {folder} folder into it.",
                f"Create a new folder and move {name} from the {folder} folder into it.",
                f"Name the folder {target}.")


@intent(calls=1)
def create_file(s: Story) -> Turn | None:
    folder = s.rng.choice(sorted(s.sim.folders))
    taken = {f["name"] for f in s.sim.files.values() if f["folder"] == folder}
    free = [b + e for b in BASES for e in EXTS if b + e not in taken]
    if not free:
        return None
    name, line = s.rng.choice(free), s.rng.choice(LINES)
    s.ctx["file"] = s.run("create_file", folder=folder, name=name, content=line)["file_id"]
    return Turn(f"Create a file named {name} in the {folder} folder with the text '{line}'.",
                f"Create a file named {name} in the {folder} folder.", f"It should say '{line}'.")


@intent(calls=2)
def rename(s: Story) -> Turn | None:
    fid, name, folder = _file(s)
    taken = {f["name"] for f in s.sim.files.values() if f["folder"] == folder}
    free = [b + e for b in BASES for e in EXTS if b + e not in taken]
    if not free:
        return None
    new = s.rng.choice(free)
    s.run("find_file", name=name, folder=folder)
    s.run("rename_file", file_id=fid, new_name=new)
    s.ctx["file"] = fid
    return Turn(f"Rename {name} in the {folder} folder to {new}.", f"Rename {name} in the {folder} folder.",
                f"The new name is {new}.")


@intent(calls=2)
def delete(s: Story) -> Turn:
    fid, name, folder = _file(s)
    s.run("find_file", name=name, folder=folder)
    s.run("delete_file", file_id=fid)
    s.ctx.pop("file", None)
    return Turn(f"Delete {name} from the {folder} folder.")


@intent(calls=1)
def folder_listing(s: Story) -> Turn:
    folder = s.rng.choice(sorted(s.sim.folders))
    s.run("list_folder", folder=folder)
    return Turn(f"Which files are in the {folder} folder?", "Which files are in one of my folders?",
                f"The {folder} folder.")


@intent(calls=3)
def share(s: Story) -> Turn:
    fid, name, folder = _file(s)
    person = _contact(s)
    s.run("find_file", name=name, folder=folder)
    cid = s.run("find_contact", name=person)["contact_id"]
    s.run("share_file", file_id=fid, contact_id=cid)
    s.ctx.update(file=fid, contact=cid)
    return Turn(f"Share {name} in the {folder} folder with {person}.",
                f"Share {name} in the {folder} folder with a colleague.", f"Share it with {person}.")


@intent(calls=2, follow_up=True)
def share_it(s: Story) -> Turn | None:
    fid = s.ctx.get("file")
    if not fid:
        return None
    person = _contact(s)
    cid = s.run("find_contact", name=person)["contact_id"]
    s.run("share_file", file_id=fid, contact_id=cid)
    s.ctx["contact"] = cid
    return Turn(f"Share that file with {person} too.", "Share that file with a colleague too.",
                f"The colleague is {person}.")


@intent(calls=1)
def contact_email(s: Story) -> Turn:
    person = _contact(s)
    s.ctx["contact"] = s.run("find_contact", name=person)["contact_id"]
    return Turn(f"What is the email address of {person}?")


# ------------------------------------------------------------------------- calendar

@intent(calls=1)
def schedule(s: Story) -> Turn | None:
    minutes = s.rng.choice(LENGTHS)
    slot = _free_slot(s, minutes)
    if slot is None:
        return None
    day, start = slot
    title = s.rng.choice(TITLES)
    s.ctx["event"] = s.run("create_event", title=title, day=day, start=start, minutes=minutes)["event_id"]
    return Turn(f"Schedule '{title}' on {_day(day)} at {start} for {minutes} minutes.",
                f"Schedule '{title}' on {_day(day)} for {minutes} minutes.", f"Start it at {start}.")


@intent(calls=2, follow_up=True)
def invite_to_it(s: Story) -> Turn | None:
    eid = s.ctx.get("event")
    if not eid:
        return None
    person = _contact(s)
    cid = s.run("find_contact", name=person)["contact_id"]
    s.run("invite", event_id=eid, contact_id=cid)
    s.ctx["contact"] = cid
    return Turn(f"Invite {person} to that event.", "Invite one of my contacts to that event.", f"Invite {person}.")


@intent(calls=1, follow_up=True)
def invite_them(s: Story) -> Turn | None:
    eid, cid = s.ctx.get("event"), s.ctx.get("contact")
    if not eid or not cid or cid in s.sim.events[eid]["attendees"]:
        return None
    s.run("invite", event_id=eid, contact_id=cid)
    return Turn("Invite them to that event as well.")


@intent(calls=2, follow_up=True)
def attach_to_it(s: Story) -> Turn | None:
    eid = s.ctx.get("event")
    if not eid:
        return None
    fid, name, folder = _file(s)
    s.run("find_file", name=name, folder=folder)
    s.run("attach_file", event_id=eid, file_id=fid)
    s.ctx["file"] = fid
    return Turn(f"Attach {name} from the {folder} folder to that event.", "Attach one of my files to that event.",
                f"Attach {name} from the {folder} folder.")


@intent(calls=1, follow_up=True)
def attach_that_file(s: Story) -> Turn | None:
    eid, fid = s.ctx.get("event"), s.ctx.get("file")
    if not eid or not fid or fid not in s.sim.files or fid in s.sim.events[eid]["attachments"]:
        return None
    s.run("attach_file", event_id=eid, file_id=fid)
    return Turn("Attach that file to the event.")


@intent(calls=1, follow_up=True)
def move_it(s: Story) -> Turn | None:
    eid = s.ctx.get("event")
    if not eid:
        return None
    slot = _free_slot(s, s.sim.events[eid]["minutes"], skip=eid)
    if slot is None:
        return None
    day, start = slot
    s.run("reschedule_event", event_id=eid, day=day, start=start)
    return Turn(f"Move that event to {_day(day)} at {start}.", f"Move that event to {_day(day)}.",
                f"Make it start at {start}.")


def _unique_event(s: Story) -> str | None:
    """An event whose title is unique on its day (so 'the X on day D' names one event)."""
    counts: dict[tuple[str, str], int] = {}
    for e in s.sim.events.values():
        counts[(e["title"], e["day"])] = counts.get((e["title"], e["day"]), 0) + 1
    ok = sorted(eid for eid, e in s.sim.events.items() if counts[(e["title"], e["day"])] == 1)
    return s.rng.choice(ok) if ok else None


@intent(calls=2)
def cancel_existing(s: Story) -> Turn | None:
    eid = _unique_event(s)
    if eid is None:
        return None
    e = s.sim.events[eid]
    title, day = e["title"], e["day"]
    s.run("list_events", day=day)
    s.run("cancel_event", event_id=eid)
    s.ctx.pop("event", None)
    return Turn(f"Cancel the '{title}' on {_day(day)}.")


@intent(calls=2)
def reschedule_existing(s: Story) -> Turn | None:
    eid = _unique_event(s)
    if eid is None:
        return None
    e = s.sim.events[eid]
    title, day = e["title"], e["day"]
    slot = _free_slot(s, e["minutes"], skip=eid)
    if slot is None:
        return None
    new_day, start = slot
    s.run("list_events", day=day)
    s.run("reschedule_event", event_id=eid, day=new_day, start=start)
    s.ctx["event"] = eid
    return Turn(f"Move the '{title}' on {_day(day)} to {_day(new_day)} at {start}.",
                f"Move the '{title}' on {_day(day)} to {_day(new_day)}.", f"It should start at {start}.")


@intent(calls=3)
def invite_existing(s: Story) -> Turn | None:
    eid = _unique_event(s)
    if eid is None:
        return None
    e = s.sim.events[eid]
    title, day = e["title"], e["day"]
    person = _contact(s)
    s.run("list_events", day=day)
    cid = s.run("find_contact", name=person)["contact_id"]
    s.run("invite", event_id=eid, contact_id=cid)
    s.ctx.update(event=eid, contact=cid)
    return Turn(f"Invite {person} to the '{title}' on {_day(day)}.", f"Invite {person} to one of my events.",
                f"The '{title}' on {_day(day)}.")


@intent(calls=1)
def agenda(s: Story) -> Turn:
    day = s.rng.choice(DAYS)
    s.run("list_events", day=day)
    return Turn(f"What is on my calendar on {_day(day)}?", "What is on my calendar?", f"On {_day(day)}.")


INTENTS = [read, append, move, new_folder_move, create_file, rename, delete, folder_listing, share, share_it,
           contact_email, schedule, invite_to_it, invite_them, attach_to_it, attach_that_file, move_it,
           cancel_existing, reschedule_existing, invite_existing, agenda]
