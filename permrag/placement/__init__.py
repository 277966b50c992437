"""Partition placement: where a row's vector lives in a partitioned
collection, so that a caller's visible rows fill whole partitions.

* :mod:`.layout` — the partition layout of a collection (how many, their
  names, which rows each holds);
* :mod:`.signature` — a row's co-visibility signature: the role rules that
  select it under the policy of the moment;
* :mod:`.covis` — co-visibility placement: a new class goes to the
  partition its signature owns;
* :mod:`.repartition` — ``rag.repartition()``: rows placed under an older
  policy moved to their partitions under the policy of now.

The first three sit below the stores (the backends, the catalog and the
policy build on them); :mod:`.repartition` moves rows through the ingester
and sits at the ingest layer (docs/architecture.md)."""
