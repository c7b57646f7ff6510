"""Thrift frontend of katran: KatranService (Katran's thrift IDL) over ``KatranLb``.

``katran_thrift.gen`` is generated from ``katran.thrift`` by ``regen.sh``;
``handler`` translates calls, ``server`` serves them, ``client`` drives them.
"""

DEFAULT_PORT = 12307
