"""Web pages (spec section 6): static URLs, communications pages, the home
page, login, registration and settings.

:class:`~presence.pages.app.Pages` is a Klein app on the
:class:`~presence.service.PresenceService`; ``makeService`` gives its
:meth:`~presence.pages.app.Pages.resource` to ``make_site`` as the default
front-end (every path no other front-end claims) and mounts its static files
at ``/static``.  See docs/pages.md.
"""

from presence.pages.app import Pages

__all__ = ["Pages"]
