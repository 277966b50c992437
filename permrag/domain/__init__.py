"""The values every layer shares, with no storage and no I/O: names and their
checks (:mod:`.names`), ACL values (:mod:`.acl`), attribute selectors
(:mod:`.selectors`), search results (:mod:`.results`, no framework) and what
crash repair reports (:mod:`.repair`)."""
