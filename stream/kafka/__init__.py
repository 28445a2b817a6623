"""Kafka wiring: `broker` talks to a broker (the embedded one, topic admin, produce and read helpers),
`config` resolves the brokers and client settings a command uses, `checks` are what `intentstream
run` checks of the brokers and topics before it consumes anything."""
