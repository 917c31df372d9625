"""Test support: engine subprocess harness, a cuttable TCP proxy, a database outage, DC-09 test modules."""
