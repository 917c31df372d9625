"""Test support: engine subprocess harness, a cuttable TCP proxy, DC-09 test modules."""
