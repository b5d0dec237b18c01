"""Outbound delivery: the deliver_outbound job, SMTP client, MX lookup, DKIM signing, DSN intake."""
