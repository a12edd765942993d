"""Names for people (spec section 10): the DNS zone, dyndns2 updates, names of pages."""
