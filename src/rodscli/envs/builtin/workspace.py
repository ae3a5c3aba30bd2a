"""Office workspace: folders and text files, contacts, and a calendar of events.

State is plain JSON data (dicts keyed by id) so a task's `initial_state` is this class's
public attributes as they are; new ids come from counters in the state, so replays agree.
Tools raise `ValueError` for requests the state does not allow.
"""

from __future__ import annotations

import re

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _minutes(start: str) -> int:
    return int(start[:2]) * 60 + int(start[3:])


class Workspace:
    """A shared drive with folders and files, an address book and a calendar."""

    def __init__(self) -> None:
        self.folders: list[str] = []
        self.files: dict[str, dict] = {}  # id -> {name, folder, content, shared_with [contact ids]}
        self.contacts: dict[str, dict] = {}  # id -> {name, email}
        self.events: dict[str, dict] = {}  # id -> {title, day, start, minutes, attendees, attachments}
        self.next_file: int = 1
        self.next_event: int = 1

    def _file(self, file_id: str) -> dict:
        f = self.files.get(file_id)
        if f is None:
            raise ValueError(f"no file with id {file_id!r}")
        return f

    def _event(self, event_id: str) -> dict:
        e = self.events.get(event_id)
        if e is None:
            raise ValueError(f"no event with id {event_id!r}")
        return e

    def _contact(self, contact_id: str) -> dict:
        c = self.contacts.get(contact_id)
        if c is None:
            raise ValueError(f"no contact with id {contact_id!r}")
        return c

    def _folder(self, folder: str) -> None:
        if folder not in self.folders:
            raise ValueError(f"no folder named {folder!r}")

    def _check_slot(self, day: str, start: str, minutes: int, skip: str | None = None) -> None:
        if not _DAY.match(day):
            raise ValueError(f"day must look like 2025-06-02, got {day!r}")
        if not _TIME.match(start):
            raise ValueError(f"start must look like 09:30, got {start!r}")
        if not 15 <= minutes <= 480:
            raise ValueError("minutes must be between 15 and 480")
        begin = _minutes(start)
        for eid, e in self.events.items():
            if eid != skip and e["day"] == day and begin < _minutes(e["start"]) + e["minutes"] and _minutes(e["start"]) < begin + minutes:
                raise ValueError(f"the slot overlaps {e['title']!r} ({eid}) at {e['start']}")

    # ----------------------------------------------------------------- files

    def list_folder(self, folder: str) -> list:
        """List the files in a folder (id and name of each).

        Args:
            folder: The folder name, e.g. 'reports'.
        """
        self._folder(folder)
        return [{"file_id": fid, "name": f["name"]} for fid, f in self.files.items() if f["folder"] == folder]

    def find_file(self, name: str, folder: str) -> dict:
        """Find a file by its name in a folder; gives its id.

        Args:
            name: The file name, e.g 'budget.txt'.
            folder: The folder that holds it.
        """
        self._folder(folder)
        for fid, f in self.files.items():
            if f["name"] == name and f["folder"] == folder:
                return {"file_id": fid, "name": name, "folder": folder}
        raise ValueError(f"no file named {name!r} in folder {folder!r}")

    def read_file(self, file_id: str) -> dict:
        """Read a file's content.

        Args:
            file_id: The file's id, as returned by find_file or list_folder.
        """
        f = self._file(file_id)
        return {"file_id": file_id, "name": f["name"], "content": f["content"]}

    def create_folder(self, name: str) -> dict:
        """Create a new, empty folder.

        Args:
            name: The folder name (letters, digits, '-' and '_').
        """
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"bad folder name {name!r}")
        if name in self.folders:
            raise ValueError(f"folder {name!r} already exists")
        self.folders.append(name)
        return {"folder": name}

    def create_file(self, folder: str, name: str, content: str) -> dict:
        """Create a text file in a folder; gives its id.

        Args:
            folder: The folder to put it in.
            name: The file name, e.g. 'notes.txt'.
            content: The text the file starts with.
        """
        self._folder(folder)
        if any(f["name"] == name and f["folder"] == folder for f in self.files.values()):
            raise ValueError(f"folder {folder!r} already has a file named {name!r}")
        file_id = f"F-{self.next_file:04d}"
        self.next_file += 1
        self.files[file_id] = {"name": name, "folder": folder, "content": content, "shared_with": []}
        return {"file_id": file_id, "name": name, "folder": folder}

    def append_to_file(self, file_id: str, text: str) -> dict:
        """Add a line of text at the end of a file.

        Args:
            file_id: The file's id.
            text: The line to add.
        """
        f = self._file(file_id)
        f["content"] = f"{f['content']}\n{text}" if f["content"] else text
        return {"file_id": file_id, "lines": f["content"].count("\n") + 1}

    def move_file(self, file_id: str, folder: str) -> dict:
        """Move a file to another folder.

        Args:
            file_id: The file's id.
            folder: The destination folder.
        """
        f = self._file(file_id)
        self._folder(folder)
        if any(g["name"] == f["name"] and g["folder"] == folder for g in self.files.values()):
            raise ValueError(f"folder {folder!r} already has a file named {f['name']!r}")
        f["folder"] = folder
        return {"file_id": file_id, "folder": folder}

    def rename_file(self, file_id: str, new_name: str) -> dict:
        """Rename a file (it stays in its folder).

        Args:
            file_id: The file's id.
            new_name: The new file name.
        """
        f = self._file(file_id)
        if any(g["name"] == new_name and g["folder"] == f["folder"] for g in self.files.values()):
            raise ValueError(f"folder {f['folder']!r} already has a file named {new_name!r}")
        f["name"] = new_name
        return {"file_id": file_id, "name": new_name}

    def delete_file(self, file_id: str) -> dict:
        """Delete a file (it is also removed from events it was attached to).

        Args:
            file_id: The file's id.
        """
        f = self._file(file_id)
        del self.files[file_id]
        for e in self.events.values():
            if file_id in e["attachments"]:
                e["attachments"].remove(file_id)
        return {"deleted": file_id, "name": f["name"]}

    # ----------------------------------------------------------------- contacts

    def find_contact(self, name: str) -> dict:
        """Find a contact by full name; gives their id and email.

        Args:
            name: The contact's full name, e.g. 'Lena Park'.
        """
        for cid, c in self.contacts.items():
            if c["name"] == name:
                return {"contact_id": cid, **c}
        raise ValueError(f"no contact named {name!r}")

    def share_file(self, file_id: str, contact_id: str) -> dict:
        """Share a file with a contact.

        Args:
            file_id: The file's id.
            contact_id: The contact's id, as returned by find_contact.
        """
        f = self._file(file_id)
        self._contact(contact_id)
        if contact_id not in f["shared_with"]:
            f["shared_with"].append(contact_id)
        return {"file_id": file_id, "shared_with": f["shared_with"]}

    # ----------------------------------------------------------------- calendar

    def create_event(self, title: str, day: str, start: str, minutes: int) -> dict:
        """Put an event on the calendar; the slot must be free. Gives the event id.

        Args:
            title: The event title.
            day: The date, like 2025-06-02.
            start: The start time, like 09:30.
            minutes: How long it lasts, in minutes (15 to 480).
        """
        self._check_slot(day, start, minutes)
        event_id = f"E-{self.next_event:04d}"
        self.next_event += 1
        self.events[event_id] = {"title": title, "day": day, "start": start, "minutes": minutes,
                                 "attendees": [], "attachments": []}
        return {"event_id": event_id, "title": title, "day": day, "start": start}

    def list_events(self, day: str) -> list:
        """List the events of a day, by start time.

        Args:
            day: The date, like 2025-06-02.
        """
        found = [{"event_id": eid, "title": e["title"], "start": e["start"], "minutes": e["minutes"]}
                 for eid, e in self.events.items() if e["day"] == day]
        return sorted(found, key=lambda e: (e["start"], e["event_id"]))

    def get_event(self, event_id: str) -> dict:
        """Get an event's details: time, attendees and attached files.

        Args:
            event_id: The event's id, as returned by create_event or list_events.
        """
        return {"event_id": event_id, **self._event(event_id)}

    def invite(self, event_id: str, contact_id: str) -> dict:
        """Invite a contact to an event.

        Args:
            event_id: The event's id.
            contact_id: The contact's id, as returned by find_contact.
        """
        e = self._event(event_id)
        self._contact(contact_id)
        if contact_id not in e["attendees"]:
            e["attendees"].append(contact_id)
        return {"event_id": event_id, "attendees": e["attendees"]}

    def attach_file(self, event_id: str, file_id: str) -> dict:
        """Attach a file to an event.

        Args:
            event_id: The event's id.
            file_id: The file's id.
        """
        e = self._event(event_id)
        self._file(file_id)
        if file_id not in e["attachments"]:
            e["attachments"].append(file_id)
        return {"event_id": event_id, "attachments": e["attachments"]}

    def reschedule_event(self, event_id: str, day: str, start: str) -> dict:
        """Move an event to another day and start time (same length); the slot must be free.

        Args:
            event_id: The event's id.
            day: The new date, like 2025-06-02.
            start: The new start time, like 14:00.
        """
        e = self._event(event_id)
        self._check_slot(day, start, e["minutes"], skip=event_id)
        e["day"], e["start"] = day, start
        return {"event_id": event_id, "day": day, "start": start}

    def cancel_event(self, event_id: str) -> dict:
        """Remove an event from the calendar.

        Args:
            event_id: The event's id.
        """
        e = self._event(event_id)
        del self.events[event_id]
        return {"cancelled": event_id, "title": e["title"]}
