"""twistd plugin: ``twistd -n presence``."""
from twisted.application.service import ServiceMaker

presence = ServiceMaker(
    "presence",
    "presence.tap",
    "Presence server: HTTP heartbeats, presence, chat and message boxes.",
    "presence",
)
