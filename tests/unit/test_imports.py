import permrag

EXPECTED = {
    "AmbiguousNameError",
    "StaleReadError",
    "ResourceConflictError",
    "VersionMismatchError",
    "IdentityFileError",
    "MassDeleteError",
    "MassRemovalError",
    "NoStoreError",
    "RepointError",
    "SourceClashError",
    "StoreLockedError",
    "SyncError",
    "UnknownPrincipalError",
    "AccessDeniedError",
    "ArgumentError",
    "DocumentRecord",
    "EncoderMismatchError",
    "NotReadableError",
    "StoreMismatchError",
    "BackendError",
    "CatalogError",
    "ConcurrentChangeError",
    "ConfigError",
    "DuplicateExternalIdError",
    "Explanation",
    "Hit",
    "Hits",
    "Options",
    "PermRAG",
    "PermragError",
    "PolicyCSVError",
    "PolicyError",
    "RegroupReport",
    "RepartitionReport",
    "RepairReport",
    "RoleCycleError",
    "RowRecord",
    "Selector",
    "SelectorError",
    "UnknownRoleError",
    "UnknownRowError",
    "UnknownSubjectError",
    "UnknownTenantError",
    "UnsupportedError",
    "parse_selector",
}


def test_public_surface_is_pinned() -> None:
    assert set(permrag.__all__) == EXPECTED
    for name in permrag.__all__:
        assert getattr(permrag, name) is not None


def test_every_error_derives_from_permrag_error() -> None:
    from permrag import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.PermragError)
