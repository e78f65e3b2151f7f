"""voxloc clients: camera producers, subscribers, recorders, REST client, dashboard, CLI."""
