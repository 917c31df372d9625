"""alarmrelay: receivers."""
