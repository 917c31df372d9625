"""alarmrelay: engine."""
