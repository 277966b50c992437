"""``permrag mcp`` (the MCP server) and ``permrag token add|list|revoke`` (its bearer tokens)."""

from __future__ import annotations

import datetime

import click

from .base import StoreCommand, emit, json_opt, main, store, tenant_opt


@main.command("mcp", cls=StoreCommand)
@click.option("--as", "as_user", default=None, help="stdio: the user every call acts as (a local, single-user server).")
@click.option("--agent", "as_agent", default=None, help="stdio: the agent acting for --as USER: every call sees only rows both may read.")
@tenant_opt
@click.option("--transport", default="stdio", show_default=True, type=click.Choice(["stdio", "http"]), help="stdio, or streamable HTTP at /mcp.")
@click.option("--host", default="127.0.0.1", show_default=True, help="http: address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="http: port.")
@click.option("--tokens", "use_tokens", is_flag=True, help="http: accept the store's tokens (`permrag token add`).")
@click.option("--jwt-key", type=click.Path(dir_okay=False), default=None, help="http: accept JWTs checked with this key file (HMAC secret or PEM public key).")
@click.option("--jwt-algorithm", default="HS256", show_default=True, help="http: the JWTs' algorithm.")
@click.option("--jwt-audience", default=None, help="http: required `aud` of the JWTs.")
@click.option("--jwt-issuer", default=None, help="http: required `iss` of the JWTs.")
@click.option("--tenant-claim", default="tenant", show_default=True, help="http: the JWT claim naming the tenant (else --tenant).")
@click.option("--mode", default="auto", show_default=True, type=click.Choice(["auto", "hybrid", "dense", "keyword"]), help="Default search mode (auto: hybrid where the backend has BM25, else dense).")
@click.option("--encoder", default=None, help="Encoder (default: the store's own).")
@click.pass_context
def mcp_cmd(ctx, as_user, as_agent, tenant, transport, host, port, use_tokens, jwt_key, jwt_algorithm, jwt_audience, jwt_issuer, tenant_claim, mode, encoder) -> None:
    """Serve search, can_read, fetch and explain to MCP clients, as one principal: --as USER (stdio) or each
    request's bearer token owner (http: --tokens and/or --jwt-key), maybe through an agent (--agent; a
    token's agent; a JWT's act claim). No tool takes a user or agent argument."""
    from ..errors import ConfigError
    from ..mcp import AnyOf, JWTVerifier, Principal, TableVerifier, Tokens, serve

    if transport == "stdio" and (as_user is None or use_tokens or jwt_key):
        raise ConfigError("a stdio server acts as one user: give --as USER (and no --tokens / --jwt-key)")
    if transport == "http" and (as_user is not None or not (use_tokens or jwt_key)):
        raise ConfigError("an HTTP server acts as each request's bearer token owner: give --tokens and/or --jwt-key (not --as)")
    if as_agent is not None and as_user is None:
        raise ConfigError("--agent acts for a user: give --as USER too (over HTTP, the token names the agent)")
    with store(ctx, encoder=encoder) as rag:
        if as_user is not None:
            rag.access.check_user_known(as_user, tenant)
            if as_agent is not None:
                rag.access.check_agent_known(as_agent, tenant)
            serve(rag, principal=Principal(as_user, tenant, (as_agent,) if as_agent else ()), mode=mode)
            return
        verifiers: list[TableVerifier | JWTVerifier] = [TableVerifier(Tokens(rag.catalog.engine), rag.aio)] if use_tokens else []
        if jwt_key:
            verifiers.append(JWTVerifier.from_file(jwt_key, algorithm=jwt_algorithm, audience=jwt_audience, issuer=jwt_issuer, tenant_claim=tenant_claim, default_tenant=tenant))
        click.echo(f"permrag MCP server on http://{host}:{port}/mcp", err=True)
        serve(rag, transport="http", host=host, port=port, verifier=AnyOf(verifiers), mode=mode)


@main.group("token")
def token_group() -> None:
    """Bearer tokens of the MCP HTTP server: add, list, revoke (only a hash of each is stored)."""


@token_group.command("add", cls=StoreCommand)
@click.argument("user")
@tenant_opt
@click.option("--name", default=None, help="A label (which client, which machine).")
@click.option("--agent", default=None, help="The agent acting for USER with this token: calls see only rows both may read.")
@click.option(
    "--scope", "scopes", multiple=True, type=click.Choice(["search", "fetch", "explain", "can_read", "scim"]), help="A tool the token may call (repeatable; none given: every search tool, never scim)."
)
@json_opt
@click.pass_context
def token_add(ctx, user, tenant, name, agent, scopes, as_json) -> None:
    """Make a token acting as USER in the tenant (through --agent, limited to --scope); it is printed once and never again."""
    from ..mcp import Tokens
    from ..toolkit import SCIM_SCOPE, check_scopes

    scim_only = check_scopes(list(scopes) or None) == (SCIM_SCOPE,)  # scopes refused before the store is read
    with store(ctx, catalog_only=True) as rag:
        if not scim_only:  # a SCIM token names its provisioner, for a tenant it may populate from nothing
            rag.access.check_user_known(user, tenant)
        if agent is not None:
            rag.access.check_agent_known(agent, tenant)
        token, info = Tokens(rag.catalog.engine).add(user, tenant, name=name, agent=agent, scopes=list(scopes) or None)
    via = f" through agent {agent!r}" if agent else ""
    emit(
        as_json,
        {"token": token, **info.to_dict()},
        lambda: click.echo(f"{token}\n(token {info.id} for user {user!r}{via} in tenant {tenant!r}, scopes {' '.join(info.scopes) or 'search fetch explain can_read'}; shown only now)"),
    )


@token_group.command("list", cls=StoreCommand)
@click.option("--user", default=None, help="Only this user's tokens.")
@json_opt
@click.pass_context
def token_list(ctx, user, as_json) -> None:
    """The tokens (ids, users, tenants, dates; never the tokens themselves)."""
    from ..mcp import Tokens

    with store(ctx, catalog_only=True) as rag:
        infos = Tokens(rag.catalog.engine).list(user=user)

    def render() -> None:
        for i in infos:
            state = f"revoked {_date(i.revoked)}" if i.revoked else "active"
            click.echo(f"{i.id}  {i.user}  agent={i.agent or '-'}  tenant={i.tenant}  scopes={','.join(i.scopes) or 'default'}  name={i.name or '-'}  created {_date(i.created)}  {state}")

    emit(as_json, [i.to_dict() for i in infos], render)


@token_group.command("revoke", cls=StoreCommand)
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx, token_id) -> None:
    """Revoke a token by its id; requests with it are refused from now on."""
    from ..mcp import Tokens

    with store(ctx, catalog_only=True) as rag:
        info = Tokens(rag.catalog.engine).revoke(token_id)
    click.echo(f"revoked token {info.id} of user {info.user!r}")


def _date(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts or 0, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
