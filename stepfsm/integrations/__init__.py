"""Integrations with other libraries; each imports its library, so import it explicitly."""
