"""``permrag agent assign|unassign|list|show``: agents, the principals that act for users.

An agent (``agent:<id>``) holds roles like a user, in a namespace apart. A
search made by a user through an agent (``--agent`` on the MCP server and on
tokens, ``agent=`` in the library) returns only the rows both may read, so an
agent's roles say what it may ever show anyone. Groups take agents as members
(``permrag group add-member G agent:<id>``) and ACL entries may name them.
"""

from __future__ import annotations

import click

from .base import StoreCommand, emit, json_opt, main, store, tenant_opt
from .group_cmds import expires_opt, until


@main.group()
def agent() -> None:
    """Agents acting for users: assign, unassign, list, show."""


@agent.command("assign", cls=StoreCommand)
@click.argument("agent_id")
@click.argument("role_name")
@expires_opt
@tenant_opt
@click.pass_context
def agent_assign(ctx, agent_id, role_name, expires, tenant) -> None:
    """Give agent AGENT_ID the role ROLE_NAME (what it may read for any user, at most)."""
    with store(ctx, catalog_only=True) as rag:
        changed = rag.policy.assign_agent(agent_id, role_name, tenant, expires_at=expires)
        held = {str(r): r for r in rag.policy.roles_of_agent(agent_id, tenant)}
        what = f"agent {agent_id!r} holds {role_name!r}{until(held[role_name].expires_at) if role_name in held else ''}"
        click.echo(f"{what} (policy version {rag.policy_version})" if changed else f"{what} already")


@agent.command("unassign", cls=StoreCommand)
@click.argument("agent_id")
@click.argument("role_name")
@tenant_opt
@click.pass_context
def agent_unassign(ctx, agent_id, role_name, tenant) -> None:
    """Take ROLE_NAME away from agent AGENT_ID."""
    with store(ctx, catalog_only=True) as rag:
        rag.policy.unassign_agent(agent_id, role_name, tenant)
        click.echo(f"agent {agent_id!r} no longer holds {role_name!r} (policy version {rag.policy_version})")


@agent.command("list", cls=StoreCommand)
@tenant_opt
@json_opt
@click.pass_context
def agent_list(ctx, tenant, as_json) -> None:
    """Agents of the tenant with their roles."""
    with store(ctx, catalog_only=True) as rag:
        listed = [(a, rag.policy.roles_of_agent(a, tenant)) for a in rag.policy.agents(tenant)]

    def render() -> None:
        if not listed:
            click.echo(f"no agents in tenant {tenant!r}")
        for name, roles in listed:
            click.echo(f"{name}: {', '.join(r.shown() for r in roles) or '-'}")

    emit(as_json, [{"agent": a, "roles": [r.to_json() for r in roles]} for a, roles in listed], render)


@agent.command("show", cls=StoreCommand)
@click.argument("agent_id")
@tenant_opt
@json_opt
@click.pass_context
def agent_show(ctx, agent_id, tenant, as_json) -> None:
    """An agent's roles (assigned and implicit), groups, and how many rows it may read."""
    with store(ctx, catalog_only=True) as rag:
        rag.access.check_agent_known(agent_id, tenant)
        roles = rag.policy.roles_of_agent(agent_id, tenant)
        data = {
            "agent": agent_id,
            "tenant": tenant,
            "roles": [r.to_json() for r in roles],
            "implicit_roles": [str(r) for r in rag.policy.roles_of_agent(agent_id, tenant, implicit=True)],
            "groups": sorted(rag.policy.tenant(tenant).groups_of(f"agent:{agent_id}", rag.policy.clock())),
            "visible_rows": len(rag.access.agent_visible(agent_id, tenant)),
            "tenant_rows": len(rag.catalog.tenant(tenant).rows),
            "policy_version": rag.policy_version,
        }

    def render() -> None:
        click.echo(
            f"agent {agent_id!r} in {tenant!r}: roles {', '.join(r.shown() for r in roles) or '-'}; all roles {', '.join(data['implicit_roles']) or '-'}; "
            f"groups {', '.join(data['groups']) or '-'}; may read {data['visible_rows']} of {data['tenant_rows']} rows "
            f"(a user acting through it sees only rows both may read; policy version {data['policy_version']})"
        )

    emit(as_json, data, render)
