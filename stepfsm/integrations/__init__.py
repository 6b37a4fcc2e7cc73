"""Integrations with other libraries, imported explicitly: ``distilabel`` (imports distilabel)
and ``ray`` (imports Ray when first used)."""
