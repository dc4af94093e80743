"""The wiring: the running engine (:mod:`service.run`: ingest -> engine -> the CIC channel on
real MQTT connections, with storage), its settings (:mod:`service.settings`) and its watchdog
(:mod:`service.watchdog`)."""
