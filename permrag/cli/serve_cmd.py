"""``permrag serve``: SCIM 2.0 provisioning, the MCP server and health checks over HTTP."""

from __future__ import annotations

import click

from .base import StoreCommand, main, store, tenant_opt


@main.command("serve", cls=StoreCommand)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port.")
@click.option("--scim-token-file", type=click.Path(dir_okay=False), default=None, help="/scim/v2: a file holding the SCIM bearer secret (one word, >= 32 characters).")
@tenant_opt
@click.option("--tokens", "use_tokens", is_flag=True, help="Accept the store's tokens: scope scim for /scim/v2 (provisioning the token's tenant), search scopes for /mcp.")
@click.option("--jwt-key", type=click.Path(dir_okay=False), default=None, help="/mcp: accept JWTs checked with this key file (HMAC secret or PEM public key).")
@click.option("--jwt-algorithm", default="HS256", show_default=True, help="/mcp: the JWTs' algorithm.")
@click.option("--jwt-audience", default=None, help="/mcp: required `aud` of the JWTs.")
@click.option("--jwt-issuer", default=None, help="/mcp: required `iss` of the JWTs.")
@click.option("--tenant-claim", default="tenant", show_default=True, help="/mcp: the JWT claim naming the tenant (else --tenant).")
@click.option("--allow-mass-removal", is_flag=True, help="/scim/v2: allow a write that empties a deny-holding group or takes more than half of its members.")
@click.option("--mode", default="auto", show_default=True, type=click.Choice(["auto", "hybrid", "dense", "keyword"]), help="/mcp: default search mode.")
@click.option("--no-warm", is_flag=True, help="/mcp: do not load the encoder and connect to Milvus at start (the first search does).")
@click.option("--encoder", default=None, help="Encoder (default: the store's own).")
@click.pass_context
def serve_cmd(ctx, host, port, scim_token_file, tenant, use_tokens, jwt_key, jwt_algorithm, jwt_audience, jwt_issuer, tenant_claim, allow_mass_removal, mode, no_warm, encoder) -> None:
    """Serve /scim/v2 (users and groups from an identity provider: each write one policy
    version), /mcp (search as each token's owner; with --tokens and/or --jwt-key), /healthz
    and /readyz. A SCIM token never searches and a search token never provisions."""
    from ..errors import ConfigError

    try:
        from ..mcp import AnyOf, JWTVerifier, TableVerifier, Tokens
        from ..serve import build_app, read_secret, run
    except ImportError as exc:
        raise ConfigError(f"permrag serve needs starlette, uvicorn and mcp ({exc.name} is missing): pip install starlette uvicorn mcp") from None
    if not (scim_token_file or use_tokens or jwt_key):
        raise ConfigError("nothing could call this server: give --scim-token-file and/or --tokens (SCIM), --tokens and/or --jwt-key (MCP)")
    secret = read_secret(scim_token_file) if scim_token_file else None
    with store(ctx, encoder=encoder) as rag:
        tokens = Tokens(rag.catalog.engine) if use_tokens else None
        verifiers: list[TableVerifier | JWTVerifier] = [TableVerifier(tokens, rag.aio)] if tokens is not None else []
        if jwt_key:
            verifiers.append(JWTVerifier.from_file(jwt_key, algorithm=jwt_algorithm, audience=jwt_audience, issuer=jwt_issuer, tenant_claim=tenant_claim, default_tenant=tenant))
        app = build_app(
            rag,
            scim_secret=secret,
            token_lookup=tokens.lookup if tokens is not None else None,
            tenant=tenant,
            mcp_verifier=AnyOf(verifiers) if verifiers else None,
            mode=mode,
            allow_mass_removal=allow_mass_removal,
            host=host,
            port=port,
            warm=not no_warm,
        )
        click.echo(f"permrag serving http://{host}:{port}/scim/v2" + (f" and http://{host}:{port}/mcp" if verifiers else ""), err=True)
        run(app, host=host, port=port)
