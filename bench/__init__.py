"""alarmrelay: bench."""
