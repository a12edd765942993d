"""Invitations by e-mail that carry live presence (spec section 11,
docs/invites.md): :mod:`~presence.invite.mail` builds the message,
:mod:`~presence.invite.outbox` keeps and sends it, :mod:`~presence.invite.badge`
draws the live badge, :mod:`~presence.invite.service` holds the rules and
:mod:`~presence.invite.web` the routes; :mod:`~presence.invite.frontend`
wires them into ``twistd presence``."""
