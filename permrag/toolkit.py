"""What a face builds on: the documented API for the CLI, the MCP server,
``permrag serve``, the LangChain and LlamaIndex integrations and the demo —
and for anyone writing another face (a web app, a bot, another framework).

The faces import only ``permrag``'s exported names (``PermRAG``, ``Hit``,
``Hits``, the errors…), :mod:`permrag.errors` and this module;
``tests/unit/test_layers.py`` checks it. Everything here is a stable name:

* argument checks the faces share, so that every face refuses what the
  library refuses, in the library's words: :func:`check_principal`,
  :func:`check_agents`, :func:`check_search_args`, :func:`check_k`;
* defaults: :data:`DEFAULT_TENANT`, :data:`DEFAULT_FUSION`, :data:`DEFAULT_WEIGHTS`;
* bearer tokens of a store (:class:`Tokens`, :class:`TokenInfo`, the scopes);
* loading files (:func:`load_path`, :func:`load_jsonl`, :class:`LoadReport`),
  LDAP sources (:class:`LdapSource`), store upgrades (:func:`upgrade_store`),
  the Milvus backend (:class:`MilvusBackend`) and the home's configuration
  (:mod:`config <permrag.config>`);
* formatting: :func:`quote` (a value inside a Milvus expression),
  :func:`show_time`, :func:`mask` (a URL without its password).

Names load on first use, as ``permrag``'s do: a face's start does not pay
for SQLAlchemy, numpy or pymilvus until it needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

_LAZY = {
    "config": (".config", None),
    "check_agents": (".access", "check_agents"),
    "check_principal": (".access", "check_principal"),
    "SCIM_SCOPE": (".access.tokens", "SCIM_SCOPE"),
    "SCOPES": (".access.tokens", "SCOPES"),
    "SEARCH_SCOPES": (".access.tokens", "SEARCH_SCOPES"),
    "TokenInfo": (".access.tokens", "TokenInfo"),
    "Tokens": (".access.tokens", "Tokens"),
    "check_scopes": (".access.tokens", "check_scopes"),
    "provisions": (".access.tokens", "provisions"),
    "MilvusBackend": (".backends", "MilvusBackend"),
    "DEFAULT_TENANT": (".catalog", "DEFAULT_TENANT"),
    "mask": (".config", "mask"),
    "Upgrade": (".storage.create", "Upgrade"),
    "upgrade_store": (".storage.create", "upgrade_store"),
    "LoadReport": (".ingest.loaders", "LoadReport"),
    "load_jsonl": (".ingest.loaders", "load_jsonl"),
    "load_path": (".ingest.loaders", "load_path"),
    "quote": (".domain.names", "quote"),
    "show_time": (".domain.names", "show_time"),
    "parse_selector": (".policy", "parse_selector"),
    "GROUP_FILTER": (".policy.ldap", "GROUP_FILTER"),
    "USER_FILTER": (".policy.ldap", "USER_FILTER"),
    "LdapSource": (".policy.ldap", "LdapSource"),
    "read_password": (".policy.ldap", "read_password"),
    "DEFAULT_FUSION": (".search", "DEFAULT_FUSION"),
    "DEFAULT_WEIGHTS": (".search", "DEFAULT_WEIGHTS"),
    "check_k": (".search", "check_k"),
    "check_search_args": (".search", "check_search_args"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        loaded = import_module(module, __package__)
        value = loaded if attr is None else getattr(loaded, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'permrag.toolkit' has no attribute {name!r}")
