"""alarmrelay: protocols."""
